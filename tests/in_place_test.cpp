// In place: forward(x, x) and backward(x, dy, stats, dy) give the same bits as the same calls with
// separate outputs, for every functor, layout and kernel path.
//
// Why it can hold (docs/api.md, "Aliasing and in-place use"): every kernel reads a group's inputs
// for its statistics (forward) or its two sums (backward) before it writes any output of that
// group, and the output sweep reads x[i] (dy[i]) in the same step that writes y[i] (dx[i]); across
// threads, chunks own disjoint groups or rows, and the column shapes cut by rows finish every
// chunk's sums before any chunk writes. The shapes below reach each path: runs in cache with a
// tail, batches of four rows, streaming stores (outputs of 8 MiB or more), column panels (ColMajor
// rows, channels-last BatchNorm), columns cut into row chunks on a pool, BatchNorm eval. A kernel
// change that reads an output position after writing it fails here.
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include "support/reference.hpp"

#include <cstdint>
#include <type_traits>

namespace {

using Eigen::Index;
using nkref::bits_equal;  // same size and the same bytes: bit for bit, NaN patterns included

template <class Tensor>
Tensor random_tensor(const typename Tensor::Dimensions& dims, std::uint32_t seed, double offset) {
  Tensor t(dims);
  nkref::from_rowmajor(nkref::normal_vec(static_cast<std::size_t>(t.size()), seed, offset, 1.0), t);
  return t;
}

template <class T>
void require_same_stats(const normkit::NormStats<T>& a, const normkit::NormStats<T>& b) {
  REQUIRE(bits_equal(a.mean, b.mean));
  REQUIRE(bits_equal(a.mean_lo, b.mean_lo));
  REQUIRE(bits_equal(a.rstd, b.rstd));
}

// One pool for the whole file; nullptr means the single-threaded overloads.
const Eigen::ThreadPoolDevice* pool_device() {
  static Eigen::ThreadPool pool(2);
  static Eigen::ThreadPoolDevice device(&pool, 2);
  return &device;
}

template <class Norm, class X, class Y>
auto forward(Norm& norm, const Eigen::ThreadPoolDevice* device, const X& x, Y& y) {
  return device ? norm.forward(*device, x, y) : norm.forward(x, y);
}

template <class Norm, class X, class S, class DX>
auto backward(const Norm& norm, const Eigen::ThreadPoolDevice* device, const X& x, const X& dy, const S& stats,
              DX& dx) {
  return device ? norm.backward(*device, x, dy, stats, dx) : norm.backward(x, dy, stats, dx);
}

// Runs forward and backward out of place on one copy of `norm` and in place on another, and
// compares outputs, statistics, gradients and (BatchNorm) running statistics bit for bit.
template <class Tensor, class Norm>
void check_in_place(const Norm& norm, const typename Tensor::Dimensions& dims, const Eigen::ThreadPoolDevice* device,
                    double offset = 0.5) {
  const Tensor x = random_tensor<Tensor>(dims, 1, offset), dy = random_tensor<Tensor>(dims, 2, 0.0);
  Norm apart = norm, in_place = norm;

  Tensor y(dims);
  const auto stats = forward(apart, device, x, y);
  Tensor xy = x;
  const auto stats_in_place = forward(in_place, device, xy, xy);
  REQUIRE(bits_equal(xy, y));
  require_same_stats(stats, stats_in_place);

  Tensor dx(dims);
  const auto grads = backward(apart, device, x, dy, stats, dx);
  Tensor dydx = dy;
  const auto grads_in_place = backward(in_place, device, x, dydx, stats, dydx);
  REQUIRE(bits_equal(dydx, dx));
  REQUIRE(bits_equal(grads.weight, grads_in_place.weight));
  REQUIRE(bits_equal(grads.bias, grads_in_place.bias));

  if constexpr (std::is_same_v<Norm, normkit::BatchNorm<typename Tensor::Scalar>>) {
    REQUIRE(bits_equal(apart.running_mean(), in_place.running_mean()));
    REQUIRE(bits_equal(apart.running_var(), in_place.running_var()));
  }
}

template <class Tensor, class Norm>
void check_both_executors(const Norm& norm, const typename Tensor::Dimensions& dims) {
  SECTION("one thread") { check_in_place<Tensor>(norm, dims, nullptr); }
  SECTION("pool of 2") { check_in_place<Tensor>(norm, dims, pool_device()); }
}

template <class T, int R, int L>
using Tn = Eigen::Tensor<T, R, L>;
using D2 = Eigen::DSizes<Index, 2>;
using D3 = Eigen::DSizes<Index, 3>;
using D4 = Eigen::DSizes<Index, 4>;

// Parameters away from 1 and 0, so that a wrong weight or bias index would show.
template <class Norm>
Norm with_random_params(Norm norm) {
  nkref::set_vec1(norm.weight(), nkref::uniform_vec(static_cast<std::size_t>(norm.weight().size()), 7, 0.5, 1.5));
  nkref::set_vec1(norm.bias(), nkref::uniform_vec(static_cast<std::size_t>(norm.bias().size()), 8, -0.5, 0.5));
  return norm;
}

}  // namespace

TEST_CASE("LayerNorm in place equals out of place, RowMajor", "[in_place]") {
  const auto ln = with_random_params(normkit::LayerNorm<float>({5, 37}));
  SECTION("rows in cache, a tail, batches of four") {
    check_both_executors<Tn<float, 3, Eigen::RowMajor>>(ln, D3(3, 5, 37));
  }
  SECTION("streaming stores (8 MiB)") {
    check_both_executors<Tn<float, 2, Eigen::RowMajor>>(with_random_params(normkit::LayerNorm<float>(4096)),
                                                        D2(512, 4096));
  }
}

TEST_CASE("LayerNorm in place equals out of place, ColMajor", "[in_place]") {
  const auto ln = with_random_params(normkit::LayerNorm<float>({5, 37}));
  SECTION("column panels") { check_both_executors<Tn<float, 3, Eigen::ColMajor>>(ln, D3(300, 5, 37)); }
  SECTION("few columns, cut into row chunks") {
    check_both_executors<Tn<float, 2, Eigen::ColMajor>>(with_random_params(normkit::LayerNorm<float>(4096)),
                                                        D2(100, 4096));
  }
  SECTION("streaming stores (8 MiB)") {
    check_both_executors<Tn<float, 2, Eigen::ColMajor>>(with_random_params(normkit::LayerNorm<float>(512)),
                                                        D2(4096, 512));
  }
}

TEST_CASE("RMSNorm in place equals out of place", "[in_place]") {
  const auto rms = with_random_params(normkit::RMSNorm<float>(37, {1e-6, true, /*bias=*/true}));
  SECTION("RowMajor") { check_both_executors<Tn<float, 2, Eigen::RowMajor>>(rms, D2(21, 37)); }
  SECTION("ColMajor") { check_both_executors<Tn<float, 2, Eigen::ColMajor>>(rms, D2(300, 37)); }
}

TEST_CASE("bfloat16 and double in place equal out of place", "[in_place]") {
  SECTION("LayerNorm bfloat16 RowMajor") {
    check_both_executors<Tn<Eigen::bfloat16, 2, Eigen::RowMajor>>(
        with_random_params(normkit::LayerNorm<Eigen::bfloat16>(77)), D2(9, 77));
  }
  SECTION("RMSNorm bfloat16 ColMajor") {
    check_both_executors<Tn<Eigen::bfloat16, 2, Eigen::ColMajor>>(
        with_random_params(normkit::RMSNorm<Eigen::bfloat16>(77)), D2(300, 77));
  }
  SECTION("LayerNorm double RowMajor") {
    check_both_executors<Tn<double, 2, Eigen::RowMajor>>(with_random_params(normkit::LayerNorm<double>(77)), D2(9, 77));
  }
}

TEST_CASE("BatchNorm in place equals out of place", "[in_place]") {
  const auto nchw = with_random_params(normkit::BatchNorm<float>(6));
  auto nhwc_options = normkit::BatchNormOptions{};
  nhwc_options.channel_axis = -1;
  const auto nhwc = with_random_params(normkit::BatchNorm<float>(16, nhwc_options));

  SECTION("NCHW RowMajor, training") { check_both_executors<Tn<float, 4, Eigen::RowMajor>>(nchw, D4(4, 6, 5, 7)); }
  SECTION("NCHW ColMajor, training") { check_both_executors<Tn<float, 4, Eigen::ColMajor>>(nchw, D4(4, 6, 5, 7)); }
  SECTION("channels-last RowMajor, training, streaming stores (8 MiB)") {
    check_both_executors<Tn<float, 4, Eigen::RowMajor>>(nhwc, D4(128, 32, 32, 16));
  }
  SECTION("channels-last RowMajor, eval with running statistics") {
    auto eval = nhwc;
    Tn<float, 4, Eigen::RowMajor> warm = random_tensor<Tn<float, 4, Eigen::RowMajor>>(D4(8, 4, 4, 16), 3, 2.0);
    eval.forward(warm, warm);  // running statistics away from their initial 0 and 1
    eval.eval();
    check_both_executors<Tn<float, 4, Eigen::RowMajor>>(eval, D4(8, 9, 9, 16));
  }
  SECTION("NCHW RowMajor, eval with running statistics") {
    auto eval = nchw;
    Tn<float, 4, Eigen::RowMajor> warm = random_tensor<Tn<float, 4, Eigen::RowMajor>>(D4(8, 6, 4, 4), 3, 2.0);
    eval.forward(warm, warm);
    eval.eval();
    check_both_executors<Tn<float, 4, Eigen::RowMajor>>(eval, D4(4, 6, 5, 7));
  }
}
