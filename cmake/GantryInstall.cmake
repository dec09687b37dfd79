# `cmake --install` produces a package: find_package(gantry) then
# target_link_libraries(app gantry::core).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS gantry_core gantry_gpu gantry_proto gantry_build_flags gantry_collective gantry_collective_backends
  gantry_config gantry_tune
  EXPORT gantryTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/core/include/gantry ${PROJECT_SOURCE_DIR}/gpu/include/gantry
  ${PROJECT_SOURCE_DIR}/config/include/gantry ${PROJECT_SOURCE_DIR}/tune/include/gantry
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET gantry_train)
  install(TARGETS gantry_train gantry_rank_layout gantry_tune_train EXPORT gantryTargets
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/train/include/gantry DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
endif()
# The `gantry` command and what `gantry train` and `gantry tune` run.
install(TARGETS gantry gantry-train gantry-tune RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(EXPORT gantryTargets NAMESPACE gantry:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/gantry)

file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/gantryConfig.cmake.in [=[
@PACKAGE_INIT@
include(CMakeFindDependencyMacro)
find_dependency(Threads)
find_dependency(Protobuf)
find_dependency(gRPC CONFIG)
find_dependency(fmt CONFIG)
find_dependency(spdlog CONFIG)
find_dependency(Gloo)
if(@GANTRY_HAVE_CUDA@)
  find_dependency(CUDAToolkit)
endif()
find_dependency(nlohmann_json CONFIG)
find_dependency(OpenSSL)
if(@GANTRY_HAVE_TORCH@)
  find_dependency(Torch CONFIG)
endif()
include("${CMAKE_CURRENT_LIST_DIR}/gantryTargets.cmake")
if(TARGET gantry::gantry_core AND NOT TARGET gantry::core)
  add_library(gantry::core ALIAS gantry::gantry_core)
endif()
if(TARGET gantry::gantry_collective AND NOT TARGET gantry::collective)
  add_library(gantry::collective ALIAS gantry::gantry_collective)
endif()
if(TARGET gantry::gantry_config AND NOT TARGET gantry::config)
  add_library(gantry::config ALIAS gantry::gantry_config)
endif()
if(TARGET gantry::gantry_tune AND NOT TARGET gantry::tune)
  add_library(gantry::tune ALIAS gantry::gantry_tune)
endif()
if(TARGET gantry::gantry_tune_train AND NOT TARGET gantry::tune_train)
  add_library(gantry::tune_train ALIAS gantry::gantry_tune_train)
endif()
if(TARGET gantry::gantry_train AND NOT TARGET gantry::train)
  add_library(gantry::train ALIAS gantry::gantry_train)
endif()
]=])
configure_package_config_file(${CMAKE_CURRENT_BINARY_DIR}/gantryConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/gantryConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/gantry)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/gantryConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/gantryConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/gantryConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/gantry)
