// Tests for core/tuning.hpp's run-time reading (the L3 size) and the decision iterate.hpp takes
// from it (prefetch the next group only when the inputs are beyond L3).
#include <catch2/catch.hpp>

#include "normkit/core/iterate.hpp"

using normkit::core::GroupShape;
using normkit::core::Index;
namespace tuning = normkit::core::tuning;

TEST_CASE("cache sizes in Linux's sysfs format are parsed, anything else is 0", "[core][tuning]") {
  CHECK(tuning::detail::parse_cache_size("8192K") == Index(8) << 20);
  CHECK(tuning::detail::parse_cache_size("32M") == Index(32) << 20);
  CHECK(tuning::detail::parse_cache_size("1G") == Index(1) << 30);
  CHECK(tuning::detail::parse_cache_size("524288") == 524288);
  CHECK(tuning::detail::parse_cache_size("") == 0);
  CHECK(tuning::detail::parse_cache_size("K") == 0);
  CHECK(tuning::detail::parse_cache_size("12X") == 0);
}

TEST_CASE("the L3 size is read once and is what the sysfs says, or the default", "[core][tuning]") {
  const Index l3 = tuning::l3_bytes();
  const Index read = tuning::detail::read_l3_bytes();
  CHECK(l3 == (read > 0 ? read : tuning::kDefaultL3Bytes));
  CHECK(tuning::l3_bytes() == l3);
}

TEST_CASE("rows prefetch the next row only when the inputs exceed L3", "[core][tuning]") {
  namespace d = normkit::core::detail;
  const Index l3 = tuning::l3_bytes();
  const Index row = 4096;  // 16 KiB of floats: two rows and their inputs fit in L2
  const Index rows_in_l3 = l3 / (row * Index(sizeof(float)));
  const GroupShape fits{1, rows_in_l3, row}, beyond{1, rows_in_l3 + 1, row};
  CHECK_FALSE(d::prefetch_groups<float>(fits, 1));
  CHECK(d::prefetch_groups<float>(beyond, 1));
  CHECK(d::prefetch_groups<float>(GroupShape{1, rows_in_l3 / 2 + 1, row}, 2));  // x and dy together
  // Rows too long for two of them (and their inputs) in L2 are never prefetched.
  const Index long_row = tuning::kL2Bytes / Index(sizeof(float));
  CHECK_FALSE(d::prefetch_groups<float>(GroupShape{1, l3 / tuning::kL2Bytes + 2, long_row}, 1));
}
