# Package file of the consumer's own library: its exported target links normkit::normkit.
include(CMakeFindDependencyMacro)
find_dependency(normkit 0.1 CONFIG)
include("${CMAKE_CURRENT_LIST_DIR}/normkit_consumerTargets.cmake")
