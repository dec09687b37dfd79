// A shared library that only the driver of needs_probe can load (see tests/CMakeLists.txt).
int gantry_probe_value() { return 41; }
