// tests/mpi/sync_batch_norm_fold_test.cpp — SyncBatchNorm has BatchNorm's folded() and fold_into()
// (they live in the shared detail::BatchNormBase; tests/batch_norm_fold_test.cpp checks their
// values). Under mpirun: after a collective training forward every rank holds the same running
// statistics, and folding then gives the same bits on every rank and the same bits as a BatchNorm
// loaded with those statistics (the same code, no communication). Every rank takes the same path:
// CHECK only.
#include <normkit/mpi.hpp>
#include <normkit/normkit.hpp>

#include <mpi.h>
#include <catch2/catch.hpp>

#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using Index = Eigen::Index;
using normkit::BatchNorm;
using normkit::BatchNormOptions;
using normkit::SyncBatchNorm;

// The members exist with BatchNorm's signatures.
using Sync = SyncBatchNorm<float>;
using W2 = Eigen::Tensor<float, 2>;
using B1 = Eigen::Tensor<float, 1>;
static_assert(std::is_same_v<decltype(std::declval<const Sync&>().folded()), normkit::ChannelAffine<float>>);
static_assert(
    std::is_void_v<decltype(std::declval<const Sync&>().fold_into(std::declval<W2&>(), std::declval<B1&>()))>);
static_assert(std::is_void_v<decltype(std::declval<const Sync&>().fold_into(std::declval<W2&>(), std::declval<B1&>(),
                                                                            Index(1)))>);

int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

template <class S>
bool same_bits(const S* a, const S* b, Index n) {
  return n == 0 || std::memcmp(a, b, static_cast<std::size_t>(n) * sizeof(S)) == 0;
}

// Every rank's copy of `v` equals rank 0's, bit for bit.
bool same_on_every_rank(const std::vector<float>& v) {
  std::vector<float> root(v);
  MPI_Bcast(root.data(), static_cast<int>(root.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
  int same = std::memcmp(root.data(), v.data(), v.size() * sizeof(float)) == 0;
  int all = 0;
  MPI_Allreduce(&same, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

}  // namespace

TEST_CASE("SyncBatchNorm folded() and fold_into() after a collective training forward", "[mpi][fold]") {
  const Index C = 3;
  SyncBatchNorm<float> sync(C, MPI_COMM_WORLD);
  sync.set_weight(std::vector<float>{0.5f, -1.25f, 2.f});
  sync.set_bias(std::vector<float>{0.1f, 0.2f, -0.3f});
  // Each rank its own slice (rank + 1 samples of (C, 4)), different per rank.
  const Index n = rank() + 1;
  Eigen::Tensor<float, 3, Eigen::RowMajor> x(n, C, 4), y(n, C, 4);
  for (Index i = 0; i < x.size(); ++i)
    x.data()[i] = static_cast<float>((i * 7 + rank() * 13) % 11) * 0.25f + static_cast<float>(i % C);
  sync.forward(x, y);  // collective: every rank gets the same running statistics
  sync.eval();

  const normkit::ChannelAffine<float> f = sync.folded();
  Eigen::Tensor<float, 2> w(C, 5);
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = static_cast<float>(i) * 0.125f - 1.f;
  Eigen::Tensor<float, 1> b(C);
  b.setConstant(0.5f);
  Eigen::Tensor<float, 2> w_ref = w;
  Eigen::Tensor<float, 1> b_ref = b;
  sync.fold_into(w, b);

  BatchNorm<float> local(C);
  local.set_weight(std::vector<float>(sync.weight().data(), sync.weight().data() + C));
  local.set_bias(std::vector<float>(sync.bias().data(), sync.bias().data() + C));
  local.set_running_mean(std::vector<float>(sync.running_mean().data(), sync.running_mean().data() + C));
  local.set_running_var(std::vector<float>(sync.running_var().data(), sync.running_var().data() + C));
  const normkit::ChannelAffine<float> g = local.folded();
  local.fold_into(w_ref, b_ref);

  CHECK(same_bits(f.scale.data(), g.scale.data(), C));
  CHECK(same_bits(f.shift.data(), g.shift.data(), C));
  CHECK(same_bits(w.data(), w_ref.data(), w.size()));
  CHECK(same_bits(b.data(), b_ref.data(), C));
  std::vector<float> all(f.scale.data(), f.scale.data() + C);
  all.insert(all.end(), f.shift.data(), f.shift.data() + C);
  all.insert(all.end(), w.data(), w.data() + w.size());
  CHECK(same_on_every_rank(all));
}

TEST_CASE("SyncBatchNorm without running statistics cannot fold: std::logic_error naming SyncBatchNorm",
          "[mpi][fold]") {
  BatchNormOptions options;
  options.track_running_stats = false;
  SyncBatchNorm<double> sync(2, MPI_COMM_WORLD, options);
  Eigen::Tensor<double, 2> w(2, 2);
  w.setConstant(1);
  Eigen::Tensor<double, 1> b(2);
  b.setZero();
  CHECK_THROWS_AS(sync.folded(), std::logic_error);
  CHECK_THROWS_WITH(sync.fold_into(w, b), Catch::Matchers::Contains("normkit::SyncBatchNorm::fold_into"));
  CHECK(w(1, 1) == 1);
}
