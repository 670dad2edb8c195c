# Build settings for normkit's OWN executables and object libraries (tests, examples, benchmarks).
# Never applied to the normkit INTERFACE target: consumers choose their own flags.

# normkit_project_warnings(<target>)
#   Warnings (-Wall -Wextra -Wpedantic -Wconversion -Wsign-conversion -Wshadow, as errors unless
#   NORMKIT_WERROR is OFF), plus -march=native when NORMKIT_NATIVE and
#   ASan+UBSan when NORMKIT_SANITIZE. Call it on every target you add under tests/, examples/, bench/.
function(normkit_project_warnings target)
  get_target_property(type ${target} TYPE)
  if(type STREQUAL "INTERFACE_LIBRARY")
    message(FATAL_ERROR "normkit_project_warnings(${target}): not for INTERFACE libraries")
  endif()

  if(MSVC)
    target_compile_options(${target} PRIVATE /W4 /permissive- $<$<BOOL:${NORMKIT_WERROR}>:/WX>)
    return()
  endif()

  # -Wconversion and -Wsign-conversion: the headers mix Eigen's signed Index with size_t and float
  # with double everywhere, and a consumer compiling them with these flags (their include path is
  # not SYSTEM under add_subdirectory) must see no warning from normkit. GCC's -Wconversion leaves
  # out the sign changes, hence both. -Wshadow: the same courtesy for a common consumer flag.
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wconversion -Wsign-conversion -Wshadow
                                           $<$<BOOL:${NORMKIT_WERROR}>:-Werror>)
  if(NORMKIT_NATIVE)
    target_compile_options(${target} PRIVATE -march=native)
  endif()
  if(NORMKIT_SANITIZE)
    # no-recover: a UBSan finding must fail the test, not just print.
    set(san -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
    target_compile_options(${target} PRIVATE ${san})
    # GCC's -Wmaybe-uninitialized misfires on sanitizer-instrumented code (even inside libstdc++,
    # e.g. std::regex in Catch2's main); the non-sanitized build keeps that warning as an error.
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      target_compile_options(${target} PRIVATE -Wno-maybe-uninitialized)
    endif()
    target_link_options(${target} PRIVATE ${san})
  endif()
endfunction()

# normkit_catch_main_flags(<target>)
#   -O1 for a Catch2 main: compiling Catch2's implementation is one of a build's slower objects (33 s
#   at -O3 against 21 s at -O1 on a Zen 1 core), built twice per build (plain and MPI mains), and the
#   runner's speed is no part of what the tests measure. Comes after the build type's flags, so it
#   wins over their -O2/-O3.
function(normkit_catch_main_flags target)
  if(NOT MSVC)
    target_compile_options(${target} PRIVATE -O1)
  endif()
endfunction()

# normkit_add_aggregate_target(<name> <source subdir>)
#   A target that builds everything defined under a subdirectory, so that scripts can build the
#   examples or benchmarks alone without knowing their target names (and without the tests).
function(normkit_add_aggregate_target name dir)
  set(targets "")
  set(dirs "${CMAKE_CURRENT_SOURCE_DIR}/${dir}")
  while(dirs)
    list(POP_FRONT dirs d)
    get_property(t DIRECTORY "${d}" PROPERTY BUILDSYSTEM_TARGETS)
    get_property(sub DIRECTORY "${d}" PROPERTY SUBDIRECTORIES)
    list(APPEND targets ${t})
    list(APPEND dirs ${sub})
  endwhile()
  add_custom_target(${name})
  foreach(t IN LISTS targets)
    get_target_property(type ${t} TYPE)
    if(NOT type STREQUAL "INTERFACE_LIBRARY")
      add_dependencies(${name} ${t})
    endif()
  endforeach()
endfunction()
