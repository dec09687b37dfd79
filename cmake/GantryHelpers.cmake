# Shared compile settings for every gantry target, carried by one INTERFACE target.
add_library(gantry_build_flags INTERFACE)
target_compile_options(gantry_build_flags INTERFACE
  -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)
if(GANTRY_SANITIZE STREQUAL "address")
  target_compile_options(gantry_build_flags INTERFACE -fsanitize=address,undefined -fno-omit-frame-pointer)
  target_link_options(gantry_build_flags INTERFACE -fsanitize=address,undefined)
elseif(GANTRY_SANITIZE STREQUAL "thread")
  # Debian's protobuf and abseil are built without TSan; their headers switch layouts and
  # code paths on __SANITIZE_THREAD__, which must match the libraries, so hide it from them.
  target_compile_options(gantry_build_flags INTERFACE -fsanitize=thread -fno-omit-frame-pointer -U__SANITIZE_THREAD__)
  target_link_options(gantry_build_flags INTERFACE -fsanitize=thread)
elseif(GANTRY_SANITIZE STREQUAL "fuzzer")
  # libFuzzer coverage plus ASan/UBSan everywhere; only the fuzz targets link the fuzzer's
  # main (tests/CMakeLists.txt). Needs clang.
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "GANTRY_SANITIZE=fuzzer needs clang: configure a fresh build directory with CXX=clang++")
  endif()
  target_compile_options(gantry_build_flags INTERFACE -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer)
  target_link_options(gantry_build_flags INTERFACE -fsanitize=address,undefined)
elseif(NOT GANTRY_SANITIZE STREQUAL "")
  message(FATAL_ERROR "GANTRY_SANITIZE must be empty, 'address', 'thread' or 'fuzzer', not '${GANTRY_SANITIZE}'")
endif()

# Environment for every test (and the workers it starts, which inherit it). Under
# ThreadSanitizer: the third-party suppressions.
set(GANTRY_TEST_ENVIRONMENT "")
if(GANTRY_SANITIZE STREQUAL "thread")
  set(GANTRY_TEST_ENVIRONMENT "TSAN_OPTIONS=suppressions=${PROJECT_SOURCE_DIR}/tests/tsan.supp")
endif()

# gantry_library(NAME SOURCES ... [PUBLIC deps] [PRIVATE deps] [INCLUDE dir])
function(gantry_library name)
  cmake_parse_arguments(ARG "" "INCLUDE" "SOURCES;PUBLIC;PRIVATE" ${ARGN})
  add_library(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PUBLIC ${ARG_PUBLIC} PRIVATE gantry_build_flags ${ARG_PRIVATE})
  if(ARG_INCLUDE)
    target_include_directories(${name} PUBLIC
      $<BUILD_INTERFACE:${ARG_INCLUDE}> $<INSTALL_INTERFACE:include>)
  endif()
endfunction()

# gantry_executable(NAME SOURCES ... [LIBS deps])
function(gantry_executable name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE gantry_build_flags ${ARG_LIBS})
endfunction()

# gantry_test(NAME SOURCES ... [LIBS deps] [LABELS labels] [TIMEOUT s])
function(gantry_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE gantry_build_flags ${ARG_LIBS} GTest::gtest GTest::gtest_main)
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 120)
  endif()
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "${ARG_LABELS}"
    ENVIRONMENT "${GANTRY_TEST_ENVIRONMENT}")
endfunction()
