// tests/batch_norm_fold_test.cpp — BatchNorm::folded() and BatchNorm::fold_into() (contract v2,
// "BatchNorm folding"): against a float64 reference of the formulas, end to end (a Linear, a
// convolution or a transposed convolution, written as plain loops, followed by BatchNorm in eval
// mode, against the folded layer), every out_axis of rank-2/3/4 weights in both layouts, Tensor and
// temporary TensorMap, and every error (nothing written on a throw). SyncBatchNorm's members:
// tests/mpi/sync_batch_norm_fold_test.cpp.
//
// Tolerances, with u = the unit roundoff of P (2^-24 float, 2^-53 double) and u64 = 2^-53:
//   folded(), fold_into()'s weight and bias vs the float64 reference: the library computes each value
//     in long double and rounds it once to P (<= u relative); the reference's own double rounding is
//     a few u64 of the terms it combined: |got - ref| <= u |ref| + 4 u64 (sum of |terms|). A wrong
//     formula (eps outside the sqrt, mean not subtracted, a channel or axis mix-up) is off by ~1e-3
//     or more in this data.
//   Linear/conv + BatchNorm vs the folded layer (both computed in P): the exact value is
//     z = s (b + sum_k W x - m) + beta (s = weight/sqrt(var + eps)). The unfolded path rounds a
//     K-term sequential sum (error <= K u (|b| + sum |W x|)) then BatchNorm's eval forward (a few
//     roundings, <= 6 u (|s| (|y| + |m|) + |beta|)); the folded path rounds W s and b' once each (u)
//     and the same K-term sum. So |unfolded - folded| <= 2 (K + 8) u (|s| (|b| + sum |W x| + |m|)
//     + |beta|), evaluated per output element. For float that is ~1e-5 relative at K = 27, far
//     below what any wrong formula gives (O(1)).
#include <normkit/normkit.hpp>

#include "support/reference.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using nkref::Index;
using normkit::BatchNorm;
using normkit::BatchNormOptions;
using Vec = std::vector<double>;

constexpr int kRow = Eigen::RowMajor;
constexpr int kCol = Eigen::ColMajor;
constexpr double kU64 = 0x1p-53;

// The umbrella header brings deepnorm.hpp too (tests/deepnorm_test.cpp tests it alone).
static_assert(std::is_class_v<normkit::DeepNormScale>, "normkit.hpp must include deepnorm.hpp");

template <class P>
constexpr double unit_roundoff() {
  return std::is_same_v<P, double> ? 0x1p-53 : 0x1p-24;
}

struct BnParams {
  Vec weight, bias, mean, var;
};

// A BatchNorm<P> in eval mode with random parameters and running statistics (P-representable);
// weight of both signs, variances from 0.05 (rstd ~ 4.4) to 4.
template <class T, class P>
BnParams load(BatchNorm<T, P>& bn, Index C, std::uint64_t seed) {
  const auto n = static_cast<std::size_t>(C);
  BnParams p;
  p.mean = nkref::round_to<P>(nkref::uniform_vec(n, seed ^ 0x11, -2.0, 2.0));
  p.var = nkref::round_to<P>(nkref::uniform_vec(n, seed ^ 0x22, 0.05, 4.0));
  bn.running_mean() = nkref::tensor1<P>(p.mean);
  bn.running_var() = nkref::tensor1<P>(p.var);
  if (bn.options().affine) {
    p.weight = nkref::round_to<P>(nkref::uniform_vec(n, seed ^ 0x33, -1.5, 1.5));
    p.bias = nkref::round_to<P>(nkref::uniform_vec(n, seed ^ 0x44, -1.0, 1.0));
    bn.weight() = nkref::tensor1<P>(p.weight);
    bn.bias() = nkref::tensor1<P>(p.bias);
  } else {
    p.weight.assign(n, 1.0);
    p.bias.assign(n, 0.0);
  }
  bn.eval();
  return p;
}

BatchNormOptions options(bool affine, double eps = 1e-3) {
  BatchNormOptions o;
  o.eps = eps;
  o.affine = affine;
  return o;
}

// The float64 reference of the contract's formulas.
double ref_scale(const BnParams& p, double eps, std::size_t c) { return p.weight[c] / std::sqrt(p.var[c] + eps); }

template <class P>
void check_close(double got, double ref, double terms, const std::string& what) {
  const double tol = unit_roundoff<P>() * std::abs(ref) + 4 * kU64 * terms;
  INFO(what << ": got " << got << ", reference " << ref << ", tolerance " << tol);
  CHECK(std::abs(got - ref) <= tol);
}

// Element-wise: fold_into on a weight with C on out_axis (any rank, layout L) against the reference.
template <class P, int R, int L>
void check_fold_into_elementwise(std::array<Index, static_cast<std::size_t>(R)> dims, Index out_axis, bool affine,
                                 std::uint64_t seed) {
  const Index C = dims[static_cast<std::size_t>(out_axis)];
  BatchNorm<P> bn(C, options(affine));
  const BnParams p = load(bn, C, seed);
  const Vec w = nkref::round_to<P>(
      nkref::uniform_vec(static_cast<std::size_t>(nkref::product(nkref::dims_vec(dims, R))), seed ^ 0x55, -1, 1));
  const Vec b = nkref::round_to<P>(nkref::uniform_vec(static_cast<std::size_t>(C), seed ^ 0x66, -1, 1));
  auto wt = nkref::make_tensor<P, R, L>(dims, w);
  Eigen::Tensor<P, 1> bt = nkref::tensor1<P>(b);
  bn.fold_into(wt, bt, out_axis);

  INFO("rank " << R << (L == kRow ? " RowMajor" : " ColMajor") << ", out_axis " << out_axis
               << (affine ? "" : ", no affine"));
  // Channel of logical row-major index k: (k / inner) % C, inner = product of the dims after out_axis.
  Index inner = 1;
  for (std::size_t a = static_cast<std::size_t>(out_axis) + 1; a < static_cast<std::size_t>(R); ++a) inner *= dims[a];
  const Vec got = nkref::to_rowmajor(wt);
  for (std::size_t k = 0; k < w.size(); ++k) {
    const auto c = static_cast<std::size_t>((static_cast<Index>(k) / inner) % C);
    const double s = ref_scale(p, 1e-3, c);
    check_close<P>(got[k], w[k] * s, std::abs(w[k] * s), "weight'[" + std::to_string(k) + "]");
  }
  for (std::size_t c = 0; c < b.size(); ++c) {
    const double s = ref_scale(p, 1e-3, c);
    check_close<P>(static_cast<double>(bt(static_cast<Index>(c))), (b[c] - p.mean[c]) * s + p.bias[c],
                   std::abs(b[c] * s) + std::abs(p.mean[c] * s) + std::abs(p.bias[c]),
                   "bias'[" + std::to_string(c) + "]");
  }
}

// A Linear layer y[n][c] = b[c] + sum_k W[c][k] x[n][k] (W stored as (C, K) for out_axis 0, as (K, C)
// for out_axis 1), accumulated in P in a plain loop; also returns sum_k |W x| per output.
template <class P>
void linear(const Vec& x, const Vec& w, const Vec& b, Index N, Index K, Index C, Index out_axis, Vec& y,
            Vec& abs_terms) {
  y.assign(static_cast<std::size_t>(N * C), 0), abs_terms.assign(y.size(), 0);
  for (Index n = 0; n < N; ++n)
    for (Index c = 0; c < C; ++c) {
      P acc = static_cast<P>(b[static_cast<std::size_t>(c)]);
      double abs_sum = 0;
      for (Index k = 0; k < K; ++k) {
        const double wv = w[static_cast<std::size_t>(out_axis == 0 ? c * K + k : k * C + c)];
        const double xv = x[static_cast<std::size_t>(n * K + k)];
        acc = static_cast<P>(acc + static_cast<P>(wv) * static_cast<P>(xv));
        abs_sum += std::abs(wv * xv);
      }
      y[static_cast<std::size_t>(n * C + c)] = static_cast<double>(acc);
      abs_terms[static_cast<std::size_t>(n * C + c)] = abs_sum;
    }
}

// A valid 2-D convolution, NCHW input (N, I, H, W), OIHW weight (O, I, kh, kw), stride 1, accumulated
// in P: out (N, O, H - kh + 1, W - kw + 1), plus sum |w x| per output.
template <class P>
void conv2d(const Vec& x, const Vec& w, const Vec& b, std::array<Index, 4> xd, std::array<Index, 4> wd, Vec& y,
            Vec& abs_terms) {
  const Index N = xd[0], I = xd[1], H = xd[2], W = xd[3], O = wd[0], KH = wd[2], KW = wd[3];
  const Index OH = H - KH + 1, OW = W - KW + 1;
  y.assign(static_cast<std::size_t>(N * O * OH * OW), 0), abs_terms.assign(y.size(), 0);
  auto at = [](Index i) { return static_cast<std::size_t>(i); };
  for (Index n = 0; n < N; ++n)
    for (Index o = 0; o < O; ++o)
      for (Index r = 0; r < OH; ++r)
        for (Index q = 0; q < OW; ++q) {
          P acc = static_cast<P>(b[at(o)]);
          double abs_sum = 0;
          for (Index i = 0; i < I; ++i)
            for (Index u = 0; u < KH; ++u)
              for (Index v = 0; v < KW; ++v) {
                const double wv = w[at(((o * I + i) * KH + u) * KW + v)];
                const double xv = x[at(((n * I + i) * H + r + u) * W + q + v)];
                acc = static_cast<P>(acc + static_cast<P>(wv) * static_cast<P>(xv));
                abs_sum += std::abs(wv * xv);
              }
          const std::size_t k = at(((n * O + o) * OH + r) * OW + q);
          y[k] = static_cast<double>(acc);
          abs_terms[k] = abs_sum;
        }
}

// A transposed 2-D convolution (stride 1, no padding), NCHW input (N, I, H, W), weight (I, O, kh, kw)
// as PyTorch's ConvTranspose2d stores it (out channels on axis 1): out (N, O, H + kh - 1, W + kw - 1),
// y[n][o][r][q] = b[o] + sum over i, u, v of x[n][i][r - u][q - v] w[i][o][u][v] (the x inside its
// bounds), accumulated in P; plus sum |w x| per output.
template <class P>
void conv_transpose2d(const Vec& x, const Vec& w, const Vec& b, std::array<Index, 4> xd, std::array<Index, 4> wd,
                      Vec& y, Vec& abs_terms) {
  const Index N = xd[0], I = xd[1], H = xd[2], W = xd[3], O = wd[1], KH = wd[2], KW = wd[3];
  const Index OH = H + KH - 1, OW = W + KW - 1;
  y.assign(static_cast<std::size_t>(N * O * OH * OW), 0), abs_terms.assign(y.size(), 0);
  auto at = [](Index i) { return static_cast<std::size_t>(i); };
  for (Index n = 0; n < N; ++n)
    for (Index o = 0; o < O; ++o)
      for (Index r = 0; r < OH; ++r)
        for (Index q = 0; q < OW; ++q) {
          P acc = static_cast<P>(b[at(o)]);
          double abs_sum = 0;
          for (Index i = 0; i < I; ++i)
            for (Index u = std::max<Index>(0, r - H + 1); u <= std::min(KH - 1, r); ++u)
              for (Index v = std::max<Index>(0, q - W + 1); v <= std::min(KW - 1, q); ++v) {
                const double wv = w[at(((i * O + o) * KH + u) * KW + v)];
                const double xv = x[at(((n * I + i) * H + r - u) * W + q - v)];
                acc = static_cast<P>(acc + static_cast<P>(wv) * static_cast<P>(xv));
                abs_sum += std::abs(wv * xv);
              }
          const std::size_t k = at(((n * O + o) * OH + r) * OW + q);
          y[k] = static_cast<double>(acc);
          abs_terms[k] = abs_sum;
        }
}

// unfolded = BatchNorm(eval) applied to the layer's output (dims `yd`, channel axis 1, layout L);
// folded = the folded layer's output. Compared with the per-element bound of the header comment.
template <class P, int R, int L>
void check_against_unfolded(BatchNorm<P>& bn, const BnParams& p, const Vec& y, const Vec& layer_bias,
                            const Vec& abs_terms, const Vec& folded_y,
                            std::array<Index, static_cast<std::size_t>(R)> yd, Index K) {
  const auto yt = nkref::make_tensor<P, R, L>(yd, y);
  auto bn_y = nkref::filled_tensor<P, R, L>(yd, P(-777));
  bn.forward(yt, bn_y);
  const Vec unfolded = nkref::to_rowmajor(bn_y);
  const nkref::ChannelLayout lay(nkref::dims_vec(yd, R), 1);
  const double u = unit_roundoff<P>();
  double worst = 0;
  for (std::size_t k = 0; k < y.size(); ++k) {
    const auto c = static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)));
    const double s = std::abs(ref_scale(p, 1e-3, c));
    const double bound = 2 * static_cast<double>(K + 8) * u *
                         (s * (std::abs(layer_bias[c]) + abs_terms[k] + std::abs(p.mean[c])) + std::abs(p.bias[c]));
    const double d = std::abs(unfolded[k] - folded_y[k]);
    if (!(d <= bound)) {
      INFO("element " << k << ": unfolded " << unfolded[k] << ", folded " << folded_y[k] << ", bound " << bound);
      CHECK(d <= bound);
    }
    worst = std::max(worst, d / bound);
  }
  INFO("worst |unfolded - folded| / bound = " << worst);
  CHECK(worst <= 1);
}

template <class P, int L>
void check_linear(Index out_axis, bool affine, std::uint64_t seed) {
  const Index N = 16, K = 24, C = 8;
  BatchNorm<P> bn(C, options(affine));
  const BnParams p = load(bn, C, seed);
  const Vec x = nkref::round_to<P>(nkref::uniform_vec(static_cast<std::size_t>(N * K), seed ^ 0x77, -1, 1));
  const Vec w = nkref::round_to<P>(nkref::uniform_vec(static_cast<std::size_t>(K * C), seed ^ 0x88, -0.5, 0.5));
  const Vec b = nkref::round_to<P>(nkref::uniform_vec(static_cast<std::size_t>(C), seed ^ 0x99, -1, 1));
  Vec y, abs_terms;
  linear<P>(x, w, b, N, K, C, out_axis, y, abs_terms);

  const std::array<Index, 2> wd = out_axis == 0 ? std::array<Index, 2>{C, K} : std::array<Index, 2>{K, C};
  auto wt = nkref::make_tensor<P, 2, L>(wd, w);
  Eigen::Tensor<P, 1> bt = nkref::tensor1<P>(b);
  bn.fold_into(wt, bt, out_axis);
  Vec folded_y, unused;
  linear<P>(x, nkref::to_rowmajor(wt), nkref::vec1(bt), N, K, C, out_axis, folded_y, unused);

  INFO((L == kRow ? "RowMajor" : "ColMajor")
       << " Linear weight, out_axis " << out_axis << (affine ? "" : ", no affine"));
  check_against_unfolded<P, 2, L>(bn, p, y, b, abs_terms, folded_y, {N, C}, K);
}

// A conv layer's input x (dims xd), weight w (dims wd) and bias b (C values), rounded to P.
struct ConvData {
  Vec x, w, b;
};
template <class P>
ConvData conv_data(const std::array<Index, 4>& xd, const std::array<Index, 4>& wd, Index C, std::uint64_t seed) {
  const auto n = [](const std::array<Index, 4>& d) {
    return static_cast<std::size_t>(nkref::product(nkref::dims_vec(d, 4)));
  };
  return {nkref::round_to<P>(nkref::uniform_vec(n(xd), seed ^ 0x77, -1, 1)),
          nkref::round_to<P>(nkref::uniform_vec(n(wd), seed ^ 0x88, -0.4, 0.4)),
          nkref::round_to<P>(nkref::uniform_vec(static_cast<std::size_t>(C), seed ^ 0x99, -1, 1))};
}

template <class P, int L>
void check_conv(bool affine, bool as_map, std::uint64_t seed) {
  const std::array<Index, 4> xd{2, 3, 6, 5}, wd{4, 3, 3, 3};
  const Index C = wd[0], K = wd[1] * wd[2] * wd[3];
  BatchNorm<P> bn(C, options(affine));
  const BnParams p = load(bn, C, seed);
  const ConvData d = conv_data<P>(xd, wd, C, seed);
  const Vec &x = d.x, &w = d.w, &b = d.b;
  Vec y, abs_terms;
  conv2d<P>(x, w, b, xd, wd, y, abs_terms);

  // The weight as a tensor of layout L, or as a temporary TensorMap over a buffer of that layout.
  auto wt = nkref::make_tensor<P, 4, L>(wd, w);
  std::vector<P> wbuf(wt.data(), wt.data() + wt.size()), bbuf(static_cast<std::size_t>(C));
  for (std::size_t c = 0; c < bbuf.size(); ++c) bbuf[c] = static_cast<P>(b[c]);
  Eigen::Tensor<P, 1> bt = nkref::tensor1<P>(b);
  if (as_map) {
    bn.fold_into(Eigen::TensorMap<Eigen::Tensor<P, 4, L>>(wbuf.data(), wd),
                 Eigen::TensorMap<Eigen::Tensor<P, 1>>(bbuf.data(), C));
    std::copy(wbuf.begin(), wbuf.end(), wt.data());
    for (Index c = 0; c < C; ++c) bt(c) = bbuf[static_cast<std::size_t>(c)];
  } else {
    bn.fold_into(wt, bt);  // out_axis defaults to 0: OIHW
  }
  Vec folded_y, unused;
  conv2d<P>(x, nkref::to_rowmajor(wt), nkref::vec1(bt), xd, wd, folded_y, unused);

  INFO((L == kRow ? "RowMajor" : "ColMajor")
       << " OIHW conv weight" << (as_map ? " (TensorMap)" : "") << (affine ? "" : ", no affine"));
  check_against_unfolded<P, 4, L>(bn, p, y, b, abs_terms, folded_y, {xd[0], C, xd[2] - wd[2] + 1, xd[3] - wd[3] + 1},
                                  K);
}

// The BatchNorm after a transposed conv: its channels are the weight's axis 1 (fold_into(w, b, 1)).
template <class P, int L>
void check_conv_transpose(bool affine, std::uint64_t seed) {
  const std::array<Index, 4> xd{2, 3, 4, 5}, wd{3, 4, 3, 2};
  const Index C = wd[1], K = wd[0] * wd[2] * wd[3];
  BatchNorm<P> bn(C, options(affine));
  const BnParams p = load(bn, C, seed);
  const ConvData d = conv_data<P>(xd, wd, C, seed);
  const Vec &x = d.x, &w = d.w, &b = d.b;
  Vec y, abs_terms;
  conv_transpose2d<P>(x, w, b, xd, wd, y, abs_terms);

  auto wt = nkref::make_tensor<P, 4, L>(wd, w);
  Eigen::Tensor<P, 1> bt = nkref::tensor1<P>(b);
  bn.fold_into(wt, bt, /*out_axis=*/1);
  Vec folded_y, unused;
  conv_transpose2d<P>(x, nkref::to_rowmajor(wt), nkref::vec1(bt), xd, wd, folded_y, unused);

  INFO((L == kRow ? "RowMajor" : "ColMajor")
       << " (I, O, kh, kw) transposed-conv weight" << (affine ? "" : ", no affine"));
  check_against_unfolded<P, 4, L>(bn, p, y, b, abs_terms, folded_y, {xd[0], C, xd[2] + wd[2] - 1, xd[3] + wd[3] - 1},
                                  K);
}

template <class P>
std::vector<unsigned char> bytes_of(const P* data, Index n) {
  std::vector<unsigned char> v(static_cast<std::size_t>(n) * sizeof(P));
  if (n) std::memcpy(v.data(), data, v.size());
  return v;
}

}  // namespace

TEMPLATE_TEST_CASE("BatchNorm folded() equals the float64 reference", "[batch_norm][fold]", float, double) {
  using P = TestType;
  for (bool affine : {true, false}) {
    const Index C = 37;
    BatchNorm<P> bn(C, options(affine));
    const BnParams p = load(bn, C, 2024 + (affine ? 1u : 0u));
    const normkit::ChannelAffine<P> f = bn.folded();
    REQUIRE(f.scale.size() == C);
    REQUIRE(f.shift.size() == C);
    INFO((affine ? "affine" : "no affine"));
    for (std::size_t c = 0; c < static_cast<std::size_t>(C); ++c) {
      const double s = ref_scale(p, 1e-3, c);
      check_close<P>(static_cast<double>(f.scale(static_cast<Index>(c))), s, std::abs(s),
                     "scale[" + std::to_string(c) + "]");
      check_close<P>(static_cast<double>(f.shift(static_cast<Index>(c))), p.bias[c] - p.mean[c] * s,
                     std::abs(p.bias[c]) + std::abs(p.mean[c] * s), "shift[" + std::to_string(c) + "]");
    }
    // From the running statistics whatever the mode: the same bits in training mode.
    bn.train();
    const normkit::ChannelAffine<P> g = bn.folded();
    CHECK(bytes_of(g.scale.data(), C) == bytes_of(f.scale.data(), C));
    CHECK(bytes_of(g.shift.data(), C) == bytes_of(f.shift.data(), C));
  }
  // eps matters, inside the sqrt: var 0 gives scale = weight / sqrt(eps).
  BatchNorm<P> bn(1, options(true, 0.25));
  bn.weight()(0) = P(3), bn.bias()(0) = P(1), bn.running_mean()(0) = P(2), bn.running_var()(0) = P(0);
  const auto f = bn.folded();
  CHECK(f.scale(0) == P(6));    // 3 / sqrt(0.25)
  CHECK(f.shift(0) == P(-11));  // 1 - 2 * 6
}

TEST_CASE("BatchNorm folded() applied to x equals the eval forward", "[batch_norm][fold]") {
  // y = scale * x + shift vs BatchNorm's eval y on a (N, C, L) batch: both are the same affine map
  // rounded differently, a few ulps of max(|x scale|, |shift|) in float.
  const Index N = 4, C = 5, L = 7;
  BatchNorm<float> bn(C, options(true));
  load(bn, C, 77);
  const std::array<Index, 3> dims{N, C, L};
  const Vec x = nkref::round_to<float>(nkref::channel_input(nkref::dims_vec(dims, 3), 1, 78));
  const auto xt = nkref::make_tensor<float, 3, kRow>(dims, x);
  const Vec y = nkref::to_rowmajor(bn(xt));
  const auto f = bn.folded();
  const nkref::ChannelLayout lay(nkref::dims_vec(dims, 3), 1);
  for (std::size_t k = 0; k < x.size(); ++k) {
    const Index c = lay.channel_of(static_cast<Index>(k));
    const double mapped = static_cast<double>(f.scale(c)) * x[k] + static_cast<double>(f.shift(c));
    const double scale = std::abs(static_cast<double>(f.scale(c)) * x[k]) + std::abs(static_cast<double>(f.shift(c)));
    INFO("element " << k);
    CHECK(std::abs(mapped - y[k]) <= 8 * 0x1p-24 * scale);
  }
}

TEMPLATE_TEST_CASE("BatchNorm fold_into a Linear: Linear + BatchNorm(eval) equals the folded Linear",
                   "[batch_norm][fold]", float, double) {
  using P = TestType;
  std::uint64_t seed = 100;
  for (bool affine : {true, false})
    for (Index out_axis : {0, 1}) {
      check_linear<P, kRow>(out_axis, affine, ++seed);
      check_linear<P, kCol>(out_axis, affine, ++seed);
    }
}

TEMPLATE_TEST_CASE("BatchNorm fold_into a conv (OIHW, rank 4): conv + BatchNorm(eval) equals the folded conv",
                   "[batch_norm][fold]", float, double) {
  using P = TestType;
  std::uint64_t seed = 200;
  for (bool affine : {true, false})
    for (bool as_map : {false, true}) {
      check_conv<P, kRow>(affine, as_map, ++seed);
      check_conv<P, kCol>(affine, as_map, ++seed);
    }
}

TEMPLATE_TEST_CASE("BatchNorm fold_into a transposed conv ((I, O, kh, kw), out_axis 1) equals the folded one",
                   "[batch_norm][fold]", float, double) {
  using P = TestType;
  std::uint64_t seed = 300;
  for (bool affine : {true, false}) {
    check_conv_transpose<P, kRow>(affine, ++seed);
    check_conv_transpose<P, kCol>(affine, ++seed);
  }
}

TEMPLATE_TEST_CASE("BatchNorm fold_into scales the out_axis slices of any rank and layout", "[batch_norm][fold]", float,
                   double) {
  using P = TestType;
  std::uint64_t seed = 300;
  for (bool affine : {true, false}) {
    check_fold_into_elementwise<P, 1, kRow>({6}, 0, affine, ++seed);
    check_fold_into_elementwise<P, 1, kCol>({6}, 0, affine, ++seed);
    for (Index axis = 0; axis < 3; ++axis) {
      std::array<Index, 3> d{3, 4, 5};
      d[static_cast<std::size_t>(axis)] = 6;
      check_fold_into_elementwise<P, 3, kRow>(d, axis, affine, ++seed);
      check_fold_into_elementwise<P, 3, kCol>(d, axis, affine, ++seed);
    }
    for (Index axis = 0; axis < 4; ++axis) {
      std::array<Index, 4> d{2, 3, 4, 5};
      d[static_cast<std::size_t>(axis)] = 7;
      check_fold_into_elementwise<P, 4, kRow>(d, axis, affine, ++seed);
      check_fold_into_elementwise<P, 4, kCol>(d, axis, affine, ++seed);
    }
  }
}

TEST_CASE("BatchNorm folding with 16-bit data: P is the parameter type", "[batch_norm][fold]") {
  // BatchNorm<bfloat16, float>: float parameters, folded into float weights (checked as float).
  BatchNorm<Eigen::bfloat16, float> mixed(9, options(true));
  const BnParams p = load(mixed, 9, 400);
  const auto f = mixed.folded();
  for (std::size_t c = 0; c < 9; ++c)
    check_close<float>(static_cast<double>(f.scale(static_cast<Index>(c))), ref_scale(p, 1e-3, c),
                       std::abs(ref_scale(p, 1e-3, c)), "mixed scale[" + std::to_string(c) + "]");
  // BatchNorm<bfloat16>: bfloat16 parameters, rounded through float (<= half an ulp of bfloat16 plus
  // half an ulp of float: 2^-8 relative covers it).
  BatchNorm<Eigen::bfloat16> bf(9, options(true));
  const BnParams q = load(bf, 9, 401);
  const auto g = bf.folded();
  Eigen::Tensor<Eigen::bfloat16, 2, kRow> w(9, 3);
  w.setConstant(Eigen::bfloat16(1));
  Eigen::Tensor<Eigen::bfloat16, 1> b(9);
  b.setZero();
  bf.fold_into(w, b);
  for (std::size_t c = 0; c < 9; ++c) {
    const double s = ref_scale(q, 1e-3, c);
    const auto i = static_cast<Index>(c);
    CHECK(std::abs(static_cast<double>(g.scale(i)) - s) <= 0x1p-8 * std::abs(s));
    CHECK(std::abs(static_cast<double>(w(i, 2)) - s) <= 0x1p-8 * std::abs(s));
    CHECK(std::abs(static_cast<double>(b(i)) - (q.bias[c] - q.mean[c] * s)) <=
          0x1p-8 * (std::abs(q.bias[c]) + std::abs(q.mean[c] * s)));
  }
}

TEST_CASE("BatchNorm folding errors: the kind, the message, and nothing written", "[batch_norm][fold][errors]") {
  using Catch::Matchers::Contains;
  const Index C = 4;
  BatchNorm<float> bn(C, options(true));
  load(bn, C, 500);
  Eigen::Tensor<float, 2, kRow> w(C, 3);
  w.setRandom();
  Eigen::Tensor<float, 1> b(C);
  b.setRandom();
  const auto w0 = bytes_of(w.data(), w.size());
  const auto b0 = bytes_of(b.data(), b.size());
  auto unchanged = [&] { return bytes_of(w.data(), w.size()) == w0 && bytes_of(b.data(), b.size()) == b0; };

  SECTION("no tracked running statistics: std::logic_error") {
    BatchNormOptions o = options(true);
    o.track_running_stats = false;
    BatchNorm<float> untracked(C, o);
    CHECK_THROWS_AS(untracked.folded(), std::logic_error);
    CHECK_THROWS_WITH(untracked.folded(), Contains("normkit::BatchNorm::folded") && Contains("track_running_stats"));
    CHECK_THROWS_AS(untracked.fold_into(w, b), std::logic_error);
    CHECK_THROWS_WITH(untracked.fold_into(w, b), Contains("normkit::BatchNorm::fold_into"));
    // Not an invalid_argument (a logic_error sibling): the call's arguments were fine.
    bool invalid = false;
    try {
      untracked.fold_into(w, b);
    } catch (const std::invalid_argument&) {
      invalid = true;
    } catch (const std::logic_error&) {
    }
    CHECK_FALSE(invalid);
    CHECK(unchanged());
  }
  SECTION("out_axis outside [0, rank): std::invalid_argument, not shape_error") {
    for (Index axis : {Index(2), Index(-1), Index(100)}) {
      INFO("out_axis " << axis);
      CHECK_THROWS_AS(bn.fold_into(w, b, axis), std::invalid_argument);
      CHECK_THROWS_WITH(bn.fold_into(w, b, axis), Contains("normkit::BatchNorm::fold_into") &&
                                                      Contains("out_axis " + std::to_string(axis)) &&
                                                      Contains("[0, 2)"));
      bool shape = false;
      try {
        bn.fold_into(w, b, axis);
      } catch (const normkit::shape_error&) {
        shape = true;
      } catch (const std::invalid_argument&) {
      }
      CHECK_FALSE(shape);
    }
    CHECK(unchanged());
  }
  SECTION("weight's out_axis extent is not C: shape_error naming weight, expected and actual") {
    CHECK_THROWS_AS(bn.fold_into(w, b, 1), normkit::shape_error);  // axis 1 has 3, C is 4
    CHECK_THROWS_WITH(bn.fold_into(w, b, 1), Contains("normkit::BatchNorm::fold_into: weight has dimensions [4, 3]") &&
                                                 Contains("3 output channels on out_axis 1") &&
                                                 Contains("num_features is 4"));
    Eigen::Tensor<float, 4, kCol> conv(5, 2, 3, 3);
    conv.setRandom();
    const auto conv0 = bytes_of(conv.data(), conv.size());
    CHECK_THROWS_AS(bn.fold_into(conv, b), normkit::shape_error);
    CHECK(bytes_of(conv.data(), conv.size()) == conv0);
    CHECK(unchanged());
  }
  SECTION("bias of another size: shape_error naming bias, expected and actual") {
    Eigen::Tensor<float, 1> b3(3);
    b3.setRandom();
    const auto b30 = bytes_of(b3.data(), b3.size());
    CHECK_THROWS_AS(bn.fold_into(w, b3), normkit::shape_error);
    CHECK_THROWS_WITH(bn.fold_into(w, b3),
                      Contains("normkit::BatchNorm::fold_into: bias has dimensions [3] but [4] was expected"));
    Eigen::Tensor<float, 1> empty;
    CHECK_THROWS_AS(bn.fold_into(w, empty), normkit::shape_error);
    CHECK(bytes_of(b3.data(), b3.size()) == b30);
    CHECK(unchanged());
  }
  SECTION("a resized parameter or running statistic: shape_error naming it") {
    bn.running_var() = Eigen::Tensor<float, 1>(C + 1).setConstant(1.f);
    CHECK_THROWS_AS(bn.folded(), normkit::shape_error);
    CHECK_THROWS_WITH(bn.folded(), Contains("normkit::BatchNorm::folded: running_var() has dimensions [5]"));
    CHECK_THROWS_WITH(bn.fold_into(w, b), Contains("running_var()"));
    CHECK(unchanged());
  }
}
