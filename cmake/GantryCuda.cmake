# Finds the CUDA toolkit and NCCL when GANTRY_WITH_CUDA is auto or ON. Defines
# GANTRY_HAVE_CUDA and, when found, the imported targets CUDA::cudart and gantry_nccl.
set(GANTRY_HAVE_CUDA OFF)
if(NOT GANTRY_WITH_CUDA STREQUAL "OFF")
  if(NOT CUDAToolkit_ROOT AND EXISTS /usr/local/cuda)
    set(CUDAToolkit_ROOT /usr/local/cuda)
  endif()
  find_package(CUDAToolkit QUIET)
  find_path(GANTRY_NCCL_INCLUDE nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
  find_library(GANTRY_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64)
  if(CUDAToolkit_FOUND AND GANTRY_NCCL_INCLUDE AND GANTRY_NCCL_LIBRARY)
    set(GANTRY_HAVE_CUDA ON)
    add_library(gantry_nccl UNKNOWN IMPORTED)
    set_target_properties(gantry_nccl PROPERTIES
      IMPORTED_LOCATION ${GANTRY_NCCL_LIBRARY}
      INTERFACE_INCLUDE_DIRECTORIES ${GANTRY_NCCL_INCLUDE})
  elseif(GANTRY_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "GANTRY_WITH_CUDA=ON but the CUDA toolkit or NCCL was not found "
                        "(looked in CUDAToolkit_ROOT=${CUDAToolkit_ROOT})")
  endif()
endif()
message(STATUS "gantry: CUDA ${GANTRY_HAVE_CUDA}")
