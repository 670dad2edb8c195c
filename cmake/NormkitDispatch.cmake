# normkit_isa_variants(<target> SOURCES <file>... [LIBRARIES <lib>...] [OPTIONS <flag>...])
#
# Compiles SOURCES once per x86-64 level (x86-64, x86-64-v2, x86-64-v3, x86-64-v4) with
# NORMKIT_ISA=_nk_<level>, so that NORMKIT_ISA_FN(name) in them defines name_nk_x86_64 ...
# name_nk_v4, and adds the results to <target>, which picks one at run time with
# normkit::dispatch::pick (include/normkit/dispatch.hpp says why and what may cross the boundary).
# Each level's objects become one relocatable object whose only global symbols are its entry
# points: `ld -r --force-group-allocation` takes the inline functions and template instances out of
# their COMDAT groups (where the final link would keep one level's copy for all) and
# `objcopy --keep-global-symbol` makes them local. -fno-gnu-unique turns the standard library's
# "unique" function-local statics into plain weak symbols, which objcopy can localize too (GCC only:
# clang never emits unique symbols).
# LIBRARIES: targets whose include directories and definitions the sources need (normkit::normkit
# is always there); OPTIONS: more compile options (warnings, -O3). Not with -flto on these sources:
# `ld -r` needs machine code, not LTO bytecode. Off x86-64 the sources are compiled once, as name_nk_base.
# The object library of one level: the sources with NORMKIT_ISA=_nk_<token> and `flags` last.
function(_normkit_isa_objects objects token sources libraries flags)
  add_library(${objects} OBJECT ${sources})
  target_link_libraries(${objects} PRIVATE normkit::normkit ${libraries})
  target_compile_definitions(${objects} PRIVATE NORMKIT_ISA=_nk_${token})
  target_compile_options(${objects} PRIVATE ${flags})
endfunction()

function(normkit_isa_variants target)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBRARIES;OPTIONS" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "normkit_isa_variants(${target}): no SOURCES")
  endif()
  if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    _normkit_isa_objects(${target}_nk_base base "${ARG_SOURCES}" "${ARG_LIBRARIES}" "${ARG_OPTIONS}")
    target_link_libraries(${target} PRIVATE ${target}_nk_base)
    return()
  endif()
  # GNU ld by name: --force-group-allocation is GNU's (CMake picks ld.lld for clang where present).
  find_program(NORMKIT_LD_BFD NAMES ld.bfd ld)
  if(NOT CMAKE_OBJCOPY OR NOT NORMKIT_LD_BFD)
    message(FATAL_ERROR "normkit_isa_variants(${target}): needs GNU ld (ld.bfd) and objcopy (Debian: binutils)")
  endif()
  # Explicit feature flags outlive a later -march (-march alone is replaced by the last one).
  if(CMAKE_CXX_FLAGS MATCHES "(^| )-m(sse4|avx|fma|f16c|bmi)")
    message(FATAL_ERROR "normkit_isa_variants(${target}): CMAKE_CXX_FLAGS turns on ISA features "
                        "(${CMAKE_CXX_FLAGS}) that every level would inherit; use -march only")
  endif()
  foreach(level x86-64 x86-64-v2 x86-64-v3 x86-64-v4)
    string(REPLACE "x86-64-" "" token ${level})
    string(REPLACE "-" "_" token ${token})
    set(objects ${target}_nk_${token})
    # -march last on the command line, so it wins over a -march in CMAKE_CXX_FLAGS.
    _normkit_isa_objects(${objects} ${token} "${ARG_SOURCES}" "${ARG_LIBRARIES}"
                         "${ARG_OPTIONS};-march=${level};$<$<CXX_COMPILER_ID:GNU>:-fno-gnu-unique>")
    set(linked ${CMAKE_CURRENT_BINARY_DIR}/${target}_nk_${token}.o)
    add_custom_command(OUTPUT ${linked}
      COMMAND ${NORMKIT_LD_BFD} -r --force-group-allocation -o ${linked} $<TARGET_OBJECTS:${objects}>
      COMMAND ${CMAKE_OBJCOPY} --wildcard --keep-global-symbol=*_nk_${token}* ${linked}
      DEPENDS $<TARGET_OBJECTS:${objects}>
      COMMAND_EXPAND_LISTS VERBATIM
      COMMENT "normkit_isa_variants: ${target} at ${level}, entry points *_nk_${token}* only")
    set_source_files_properties(${linked} PROPERTIES EXTERNAL_OBJECT TRUE GENERATED TRUE)
    target_sources(${target} PRIVATE ${linked})
    add_dependencies(${target} ${objects})   # DEPENDS alone orders files, not the object library's build
  endforeach()
endfunction()
