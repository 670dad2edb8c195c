// Tests for tensor_view.hpp and thread_pool.hpp: how tensors map onto the core's shapes, the
// row-major/column-major index maps, layout conversion, and the pool executor.
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <vector>

using Eigen::Index;
namespace detail = normkit::detail;

TEST_CASE("trailing and channel groups follow the layout", "[tensor_view]") {
  const Index dims[] = {2, 3, 4, 5};
  const auto rm = detail::trailing_groups(dims, 4, 2, true), cm = detail::trailing_groups(dims, 4, 2, false);
  CHECK((rm.outer == 1 && rm.groups == 6 && rm.inner == 20));
  CHECK((cm.outer == 20 && cm.groups == 6 && cm.inner == 1));
  const auto nchw = detail::channel_groups(dims, 4, 1, true), nchw_cm = detail::channel_groups(dims, 4, 1, false);
  CHECK((nchw.outer == 2 && nchw.groups == 3 && nchw.inner == 20));
  CHECK((nchw_cm.outer == 20 && nchw_cm.groups == 3 && nchw_cm.inner == 2));
  const auto last = detail::channel_groups(dims, 4, 3, true);
  CHECK((last.outer == 24 && last.groups == 5 && last.inner == 1));
}

TEST_CASE("colmajor_to_rowmajor maps column-major positions to row-major ones", "[tensor_view]") {
  const Index dims[] = {2, 3, 4};
  Eigen::Tensor<int, 3, Eigen::ColMajor> cm(2, 3, 4);
  Eigen::Tensor<int, 3, Eigen::RowMajor> rm(2, 3, 4);
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j)
      for (Index k = 0; k < 4; ++k) cm(i, j, k) = rm(i, j, k) = int(100 * i + 10 * j + k);
  const std::vector<Index> map = detail::colmajor_to_rowmajor(dims, 3);
  REQUIRE(map.size() == 24);
  for (std::size_t jj = 0; jj < map.size(); ++jj) CHECK(cm.data()[jj] == rm.data()[map[jj]]);
}

TEST_CASE("in_layout and OutputIn convert between layouts without changing dims", "[tensor_view]") {
  Eigen::Tensor<float, 3, Eigen::RowMajor> rm(2, 3, 4);
  rm.setRandom();
  Eigen::Tensor<float, 3, Eigen::ColMajor> copy;
  const float* p = detail::in_layout<Eigen::ColMajor>(rm, copy);
  CHECK(p == copy.data());
  Eigen::Tensor<float, 3, Eigen::RowMajor> same;
  CHECK(detail::in_layout<Eigen::RowMajor>(rm, same) == rm.data());  // no copy when the layout matches
  CHECK(same.size() == 0);

  Eigen::Tensor<float, 3, Eigen::RowMajor> back(2, 3, 4);
  detail::OutputIn<Eigen::ColMajor, decltype(back)> out(back);
  std::copy(copy.data(), copy.data() + copy.size(), out.data());
  out.commit();
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j)
      for (Index k = 0; k < 4; ++k) {
        CHECK(copy(i, j, k) == rm(i, j, k));
        CHECK(back(i, j, k) == rm(i, j, k));
      }
}

TEST_CASE("the pool executor runs every chunk exactly once", "[thread_pool]") {
  Eigen::ThreadPool pool(3);
  Eigen::ThreadPoolDevice device(&pool, 3);
  const detail::PoolExecutor exec{device};
  CHECK(exec.threads() == 3);
  for (Index chunks : {Index(0), Index(1), Index(2), Index(7)}) {
    std::vector<std::atomic<int>> hits(static_cast<std::size_t>(chunks));
    exec.run(chunks, [&](Index k) { hits[static_cast<std::size_t>(k)]++; });
    for (auto& h : hits) CHECK(h.load() == 1);
  }
}
