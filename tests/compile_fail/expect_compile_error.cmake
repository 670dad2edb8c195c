# cmake -D BUILD_DIR=... -D TARGET=... [-D CONFIG=...] -D EXPECTED=... -P expect_compile_error.cmake
# Builds TARGET and passes when the build fails, its first compiler error contains EXPECTED (a
# literal string, not a regex), and exactly one static_assert failed: the sentence must be what
# the user sees first, not the tail of a cascade.
set(config_args "")
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()
# LC_ALL=C: the compiler's own words ("error:", "static assertion failed") untranslated.
execute_process(
  COMMAND "${CMAKE_COMMAND}" -E env LC_ALL=C "${CMAKE_COMMAND}" --build "${BUILD_DIR}" --target "${TARGET}" ${config_args}
  RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE out)

if(result EQUAL 0)
  message(FATAL_ERROR "${TARGET} compiled, but this misuse must be rejected at compile time\n${out}")
endif()

string(REGEX MATCH "[^\n]*error:[^\n]*" first_error "${out}")
if(NOT first_error)
  message(FATAL_ERROR "${TARGET}: the build failed without a compiler error\n${out}")
endif()
string(FIND "${first_error}" "${EXPECTED}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "${TARGET}: the first error is not the expected sentence\n"
                      "expected: ${EXPECTED}\nfirst error: ${first_error}\nfull output:\n${out}")
endif()

# GCC: "static assertion failed"; clang 14: "static_assert failed"; clang 16+: "static assertion failed".
string(REGEX MATCHALL "static.assert(ion)? failed" asserts "${out}")
list(LENGTH asserts count)
if(NOT count EQUAL 1)
  message(FATAL_ERROR "${TARGET}: ${count} static_asserts failed, expected exactly one\n${out}")
endif()
message(STATUS "${TARGET}: rejected with: ${first_error}")
