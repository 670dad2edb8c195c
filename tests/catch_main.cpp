// The Catch2 main, compiled once (OBJECT library normkit_catch_main) and linked into every test.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
