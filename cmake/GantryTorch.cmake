# Finds LibTorch when GANTRY_WITH_TORCH is auto or ON and defines GANTRY_HAVE_TORCH.
# -DTorch_DIR=... points the build at another LibTorch (a CUDA build, say).
set(GANTRY_HAVE_TORCH OFF)
if(NOT GANTRY_WITH_TORCH STREQUAL "OFF")
  find_package(Torch CONFIG QUIET)
  if(Torch_FOUND AND TARGET torch)
    set(GANTRY_HAVE_TORCH ON)
  elseif(GANTRY_WITH_TORCH STREQUAL "ON")
    message(FATAL_ERROR "GANTRY_WITH_TORCH=ON but LibTorch was not found: install libtorch-dev "
                        "or pass -DTorch_DIR=<libtorch>/share/cmake/Torch")
  endif()
endif()
message(STATUS "gantry: LibTorch ${GANTRY_HAVE_TORCH} ${Torch_DIR}")
