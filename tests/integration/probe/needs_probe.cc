// A driver whose program needs a shared library its nodes do not have: the cluster must
// say which library is missing on which node instead of failing obscurely.
#include <gantry/gantry.h>

#include <iostream>

int gantry_probe_value();

int probe() { return gantry_probe_value() + 1; }
GANTRY_REMOTE(probe);

int main(int argc, char** argv) {
  gantry::init(argc, argv);
  try {
    std::cout << "probe: " << gantry::task(probe).remote().get() << std::endl;
  } catch (const gantry::Error& e) {
    std::cout << "probe failed: " << e.what() << std::endl;
    gantry::shutdown();
    return 1;
  }
  gantry::shutdown();
  return 0;
}
