// tests/group_norm_test.cpp — GroupNorm and InstanceNorm through one harness: both are "normalize
// (sample, group of channels) over its channels and spatial positions, then a per-channel affine";
// InstanceNorm is the case of one channel per group plus running statistics. Checked against a
// float64 (long double) model of PyTorch's nn.GroupNorm / nn.InstanceNormNd written here:
//   - forward and backward, ranks 2-5, NCHW and channels-last, RowMajor and ColMajor, affine on/off,
//     every type (double, float, bfloat16 and half with P = float, bfloat16 with P = bfloat16);
//   - finite differences in double for both functors and layouts (and InstanceNorm's constant-
//     statistics gradient in eval);
//   - InstanceNorm's running statistics over a sequence of batches (momentum and cumulative) against
//     hand-computed PyTorch-semantics values, and eval with them;
//   - numerics per group: offsets 1e4 with unit noise, constant groups give the bias exactly, a NaN
//     poisons its own group only;
//   - bad input: C % G != 0, G < 1, a channel count other than the functor's, InstanceNorm training
//     with one spatial element, channel_axis other than 1 / last, wrong stats; nothing written;
//   - invariance (pools of 1-4 threads bit-equal to the plain call) and in place (y on x, dx on dy).
// Tolerances, as |got - want| <= tol * (1 + |want|) (values) or tol * (1 + sum |terms|) (gradient
// sums): double 1e-10; float 2e-4 (float sums over up to a few thousand values, amplified by
// |x - mean| / std <= ~5); half 1e-2, bfloat16 4e-2 (one rounding of the output, 2^-11 / 2^-8, plus
// the float path's error), relative to the magnitude.
#include <normkit/normkit.hpp>

#include "support/reference.hpp"

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace {

using nkref::Index;
using nkref::Vec;
using normkit::GroupNorm;
using normkit::GroupNormOptions;
using normkit::InstanceNorm;
using normkit::InstanceNormOptions;

template <class T>
double tol_of() {
  if constexpr (std::is_same_v<T, double>) return 1e-10;
  else if constexpr (std::is_same_v<T, float>) return 2e-4;
  else if constexpr (std::is_same_v<T, Eigen::half>) return 1e-2;
  else return 4e-2;
}

// ------------------------------------------------------------------------------------------------
// The float64 model. Data in NCHW row-major order: (N, C, S) with S the spatial size.
// ------------------------------------------------------------------------------------------------
struct Geometry {
  Index N, C, G, S;
  Index cpg() const { return C / G; }
  Index at(Index n, Index c, Index s) const { return (n * C + c) * S + s; }
  Index size() const { return N * C * S; }
};

struct Ref {
  Vec y, mean, rstd, dx, dw, db, dw_scale, db_scale;
};

// Per (n, g): biased statistics, or the given per-channel constants (InstanceNorm eval with running
// statistics: G == C). w, b empty: no affine.
inline Ref reference(const Geometry& k, const Vec& x, const Vec& dy, const Vec& w, const Vec& b, double eps,
                     const Vec* run_mean = nullptr, const Vec* run_var = nullptr) {
  Ref r;
  r.y.assign(x.size(), 0), r.dx.assign(x.size(), 0);
  r.dw.assign(std::size_t(k.C), 0), r.db.assign(std::size_t(k.C), 0);
  r.dw_scale.assign(std::size_t(k.C), 0), r.db_scale.assign(std::size_t(k.C), 0);
  const auto W = [&](Index c) { return w.empty() ? 1.0L : (long double)w[std::size_t(c)]; };
  const auto B = [&](Index c) { return b.empty() ? 0.0L : (long double)b[std::size_t(c)]; };
  const Index cpg = k.cpg(), cnt = cpg * k.S;
  for (Index n = 0; n < k.N; ++n)
    for (Index g = 0; g < k.G; ++g) {
      const auto each = [&](auto&& f) {
        for (Index c = g * cpg; c < (g + 1) * cpg; ++c)
          for (Index s = 0; s < k.S; ++s) f(c, std::size_t(k.at(n, c, s)));
      };
      long double mean = 0, var = 0;
      if (run_mean) {
        mean = (*run_mean)[std::size_t(g)], var = (*run_var)[std::size_t(g)];
      } else {
        each([&](Index, std::size_t e) { mean += x[e]; });
        mean /= cnt;
        each([&](Index, std::size_t e) { var += (x[e] - mean) * (x[e] - mean); });
        var /= cnt;
      }
      const long double rstd = 1 / std::sqrt(var + (long double)eps);
      r.mean.push_back(double(mean)), r.rstd.push_back(double(rstd));
      long double mg = 0, mgx = 0;
      each([&](Index c, std::size_t e) {
        const long double xhat = (x[e] - mean) * rstd, gv = dy[e] * W(c);
        r.y[e] = double(xhat * W(c) + B(c));
        mg += gv, mgx += gv * xhat;
        r.dw[std::size_t(c)] += double(dy[e] * xhat), r.db[std::size_t(c)] += dy[e];
        r.dw_scale[std::size_t(c)] += double(std::fabs(dy[e] * xhat)), r.db_scale[std::size_t(c)] += std::fabs(dy[e]);
      });
      mg /= cnt, mgx /= cnt;
      if (run_mean) mg = mgx = 0;
      each([&](Index c, std::size_t e) {
        const long double xhat = (x[e] - mean) * rstd;
        r.dx[e] = double(rstd * (dy[e] * W(c) - mg - xhat * mgx));
      });
    }
  return r;
}

// ------------------------------------------------------------------------------------------------
// Running a functor on NCHW data in any layout; results back in NCHW row-major order.
// ------------------------------------------------------------------------------------------------
template <int R>
std::array<Index, std::size_t(R)> last_dims(const std::array<Index, std::size_t(R)>& d) {
  std::array<Index, std::size_t(R)> out{};
  out[0] = d[0];
  for (int i = 2; i < R; ++i) out[std::size_t(i - 1)] = d[std::size_t(i)];
  out[std::size_t(R - 1)] = d[1];
  return out;
}
inline Vec to_last(const Vec& v, Index N, Index C, Index S) {
  Vec out(v.size());
  for (Index n = 0; n < N; ++n)
    for (Index c = 0; c < C; ++c)
      for (Index s = 0; s < S; ++s) out[std::size_t((n * S + s) * C + c)] = v[std::size_t((n * C + c) * S + s)];
  return out;
}
inline Vec from_last(const Vec& v, Index N, Index C, Index S) {
  Vec out(v.size());
  for (Index n = 0; n < N; ++n)
    for (Index c = 0; c < C; ++c)
      for (Index s = 0; s < S; ++s) out[std::size_t((n * C + c) * S + s)] = v[std::size_t((n * S + s) * C + c)];
  return out;
}

template <class T>
struct Run {
  Vec y, dx, dw, db, mean, rstd;
  normkit::NormStats<T> stats;
};

// f: a GroupNorm or InstanceNorm built for layout `last`. dev: a pool, or null for the plain call.
template <class T, int R, int L, class F>
Run<T> run(F& f, const std::array<Index, std::size_t(R)>& nchw, bool last, const Vec& x, const Vec& dy,
           const Eigen::ThreadPoolDevice* dev = nullptr) {
  const Index N = nchw[0], C = nchw[1], S = nkref::product(std::vector<Index>(nchw.begin() + 2, nchw.end()));
  const auto d = last ? last_dims<R>(nchw) : nchw;
  const auto tx = nkref::make_tensor<T, R, L>(d, last ? to_last(x, N, C, S) : x);
  const auto tdy = nkref::make_tensor<T, R, L>(d, last ? to_last(dy, N, C, S) : dy);
  Eigen::Tensor<T, R, L> ty(d), tdx(d);
  Run<T> r;
  r.stats = dev ? f.forward(*dev, tx, ty) : f.forward(tx, ty);
  const auto grads = dev ? f.backward(*dev, tx, tdy, r.stats, tdx) : f.backward(tx, tdy, r.stats, tdx);
  r.y = nkref::to_rowmajor(ty), r.dx = nkref::to_rowmajor(tdx);
  if (last) r.y = from_last(r.y, N, C, S), r.dx = from_last(r.dx, N, C, S);
  r.dw = nkref::vec1(grads.weight), r.db = nkref::vec1(grads.bias);
  r.mean = nkref::vec1(r.stats.mean), r.rstd = nkref::vec1(r.stats.rstd);
  return r;
}

void check_against(const Run<double>& got, const Ref& want, double tol, const std::string& what) {
  const auto vals = [&](const Vec& g, const Vec& w, const char* name) {
    const auto m = nkref::compare(g, w, tol, tol, what + ": " + name);
    INFO(m.str());
    CHECK(m.ok);
  };
  vals(got.y, want.y, "y");
  vals(got.dx, want.dx, "dx");
  vals(got.mean, want.mean, "stats.mean");
  vals(got.rstd, want.rstd, "stats.rstd (relative)");
  if (!got.dw.empty()) {
    Vec sw = want.dw_scale, sb = want.db_scale;
    for (double& v : sw) v += 1;
    for (double& v : sb) v += 1;
    const auto mw = nkref::compare_scaled(got.dw, want.dw, sw, tol, what + ": dweight");
    const auto mb = nkref::compare_scaled(got.db, want.db, sb, tol, what + ": dbias");
    INFO(mw.str() << "\n" << mb.str());
    CHECK((mw.ok && mb.ok));
  }
}

template <class T>
Run<double> widen(const Run<T>& r) {
  Run<double> out;
  out.y = r.y, out.dx = r.dx, out.dw = r.dw, out.db = r.db, out.mean = r.mean, out.rstd = r.rstd;
  return out;
}

// One functor family: how to build it and what its reference is.
struct GroupNormFamily {
  static constexpr int min_rank = 2;
  static Index groups(Index G, Index) { return G; }
  template <class T, class P>
  static GroupNorm<T, P> make(Index G, Index C, bool affine, bool last) {
    GroupNormOptions o;
    o.affine = affine, o.channel_axis = last ? -1 : 1;
    return GroupNorm<T, P>(G, C, o);
  }
};
struct InstanceNormFamily {
  static constexpr int min_rank = 3;
  static Index groups(Index, Index C) { return C; }
  template <class T, class P>
  static InstanceNorm<T, P> make(Index, Index C, bool affine, bool last) {
    InstanceNormOptions o;
    o.affine = affine, o.channel_axis = last ? -1 : 1;
    return InstanceNorm<T, P>(C, o);
  }
};

template <class T, class P, int R, int L, class Family>
void check_reference(const std::array<Index, std::size_t(R)>& nchw, Index groups, bool affine, bool last) {
  const Index G = Family::groups(groups, nchw[1]);
  const Index N = nchw[0], C = nchw[1], S = nkref::product(std::vector<Index>(nchw.begin() + 2, nchw.end()));
  const Geometry k{N, C, G, S};
  const Vec x = nkref::random_input<T>(std::size_t(k.size()), 21, 1.5, 2.0);
  const Vec dy = nkref::random_input<T>(std::size_t(k.size()), 22, 0.0, 1.0);
  const Vec w = affine ? nkref::round_to<P>(nkref::normal_vec(std::size_t(C), 23, 1.0, 0.5)) : Vec{};
  const Vec b = affine ? nkref::round_to<P>(nkref::normal_vec(std::size_t(C), 24, 0.0, 1.0)) : Vec{};
  auto f = Family::template make<T, P>(G, C, affine, last);
  if (affine) nkref::set_vec1(f.weight(), w), nkref::set_vec1(f.bias(), b);
  const Run<T> got = run<T, R, L>(f, nchw, last, x, dy);
  INFO("dims " << normkit::detail::dims_string(nchw, R) << " G " << G << " affine " << affine << " channels-last "
               << last << " layout " << (L == Eigen::RowMajor ? "RowMajor" : "ColMajor"));
  check_against(widen(got), reference(k, x, dy, w, b, 1e-5), tol_of<T>(), "reference");
  CHECK(got.stats.source == normkit::StatsSource::Batch);
  CHECK(got.stats.mean.size() == N * G);
  if (!affine) CHECK((got.dw.empty() && got.db.empty()));
}

template <class T, class P, class Family>
void reference_sweep(bool all_layouts) {
  for (const bool last : {false, true})
    for (const bool affine : {true, false}) {
      if constexpr (Family::min_rank <= 2) {
        check_reference<T, P, 2, Eigen::RowMajor, Family>({5, 6}, 3, affine, last);
        check_reference<T, P, 2, Eigen::RowMajor, Family>({5, 6}, 6, affine, last);  // one value per group
        check_reference<T, P, 2, Eigen::ColMajor, Family>({4, 6}, 1, affine, last);
      }
      check_reference<T, P, 3, Eigen::RowMajor, Family>({3, 8, 7}, 4, affine, last);
      check_reference<T, P, 4, Eigen::RowMajor, Family>({2, 12, 5, 3}, 3, affine, last);
      check_reference<T, P, 4, Eigen::RowMajor, Family>({2, 12, 5, 3}, 12, affine, last);
      if constexpr (Family::min_rank <= 2)  // (InstanceNorm: an error, see "bad input")
        check_reference<T, P, 4, Eigen::RowMajor, Family>({3, 8, 1, 1}, 4, affine, last);  // one spatial position
      check_reference<T, P, 4, Eigen::RowMajor, Family>({0, 8, 3, 3}, 4, affine, last);    // empty batch
      check_reference<T, P, 5, Eigen::RowMajor, Family>({2, 4, 3, 2, 3}, 2, affine, last);
      check_reference<T, P, 4, Eigen::RowMajor, Family>({4, 64, 24, 24}, 32, affine, last);  // several chunks
      if (all_layouts) {
        check_reference<T, P, 3, Eigen::ColMajor, Family>({3, 8, 7}, 2, affine, last);
        check_reference<T, P, 4, Eigen::ColMajor, Family>({2, 12, 5, 3}, 4, affine, last);
        check_reference<T, P, 5, Eigen::ColMajor, Family>({2, 4, 3, 2, 3}, 4, affine, last);
      }
    }
}

}  // namespace

TEST_CASE("GroupNorm against the float64 model: ranks 2-5, both channel layouts, both memory layouts",
          "[group_norm][reference]") {
  reference_sweep<double, double, GroupNormFamily>(true);
  reference_sweep<float, float, GroupNormFamily>(true);
  reference_sweep<Eigen::bfloat16, float, GroupNormFamily>(false);
  reference_sweep<Eigen::half, float, GroupNormFamily>(false);
  reference_sweep<Eigen::bfloat16, Eigen::bfloat16, GroupNormFamily>(false);
}

TEST_CASE("InstanceNorm (instance statistics) against the float64 model", "[instance_norm][reference]") {
  reference_sweep<double, double, InstanceNormFamily>(true);
  reference_sweep<float, float, InstanceNormFamily>(true);
  reference_sweep<Eigen::bfloat16, float, InstanceNormFamily>(false);
  reference_sweep<Eigen::half, float, InstanceNormFamily>(false);
}

TEST_CASE("GroupNorm/InstanceNorm backward: finite differences in double", "[group_norm][instance_norm][gradient]") {
  const std::array<Index, 4> nchw{2, 6, 3, 2};
  const Geometry k{2, 6, 3, 6};
  const Vec x = nkref::normal_vec(std::size_t(k.size()), 31, 0.5, 1.5);
  const Vec r = nkref::normal_vec(std::size_t(k.size()), 32);  // loss = sum(y * r), so dy = r
  const Vec w0 = nkref::normal_vec(6, 33, 1.0, 0.5), b0 = nkref::normal_vec(6, 34);
  const auto check = [&](auto make, const char* what) {
    for (const bool last : {false, true}) {
      INFO(what << ", channels-last " << last);
      auto f = make(last);
      nkref::set_vec1(f.weight(), w0), nkref::set_vec1(f.bias(), b0);
      const Run<double> got = run<double, 4, Eigen::RowMajor>(f, nchw, last, x, r);
      // loss(x, w, b) through the functor itself; forward only (a fresh functor: no running state moves).
      const auto loss = [&](const Vec& xv, const Vec& wv, const Vec& bv) {
        auto g = make(last);
        nkref::set_vec1(g.weight(), wv), nkref::set_vec1(g.bias(), bv);
        const Run<double> o = run<double, 4, Eigen::RowMajor>(g, nchw, last, xv, r);
        double s = 0;
        for (std::size_t i = 0; i < o.y.size(); ++i) s += o.y[i] * r[i];
        return s;
      };
      const Vec gx = nkref::fd_gradient([&](const Vec& v) { return loss(v, w0, b0); }, x, 1e-5);
      const Vec gw = nkref::fd_gradient([&](const Vec& v) { return loss(x, v, b0); }, w0, 1e-5);
      const Vec gb = nkref::fd_gradient([&](const Vec& v) { return loss(x, w0, v); }, b0, 1e-5);
      const auto mx = nkref::compare(got.dx, gx, 1e-6, 1e-6, "dx"),
                 mw = nkref::compare(got.dw, gw, 1e-6, 1e-6, "dweight"),
                 mb = nkref::compare(got.db, gb, 1e-6, 1e-6, "dbias");
      INFO(mx.str() << "\n" << mw.str() << "\n" << mb.str());
      CHECK((mx.ok && mw.ok && mb.ok));
    }
  };
  check([](bool last) { return GroupNormFamily::make<double, double>(3, 6, true, last); }, "GroupNorm G=3");
  check([](bool last) { return GroupNormFamily::make<double, double>(1, 6, true, last); }, "GroupNorm G=1");
  check([](bool last) { return InstanceNormFamily::make<double, double>(6, 6, true, last); }, "InstanceNorm, training");
  // Eval with running statistics: constants, so the loss's gradient is dy * w * rstd.
  check(
      [](bool last) {
    InstanceNormOptions o;
    o.affine = true, o.track_running_stats = true, o.channel_axis = last ? -1 : 1;
    InstanceNorm<double> f(6, o);
    nkref::set_vec1(f.running_mean(), {0.3, -0.2, 0.1, 0.5, 0.0, -1.0});
    nkref::set_vec1(f.running_var(), {1.5, 0.7, 2.0, 0.9, 1.1, 0.4});
    f.eval();
    return f;
      },
      "InstanceNorm, eval with running statistics");
}

namespace {

// Hand-computed PyTorch semantics of InstanceNorm's running statistics: per batch, per channel, the
// average over n of the instance mean and unbiased var; running = (1 - m) running + m avg.
template <class T, class P>
void check_running_sequence(std::optional<double> momentum, bool last, double tol) {
  const Index N = 3, C = 4, S = 10;
  const std::array<Index, 4> nchw{N, C, 2, 5};
  InstanceNormOptions o;
  o.track_running_stats = true, o.momentum = momentum, o.affine = true, o.channel_axis = last ? -1 : 1;
  InstanceNorm<T, P> f(C, o);
  const Vec w = nkref::round_to<P>(nkref::normal_vec(std::size_t(C), 41, 1.0, 0.3));
  const Vec b = nkref::round_to<P>(nkref::normal_vec(std::size_t(C), 42));
  nkref::set_vec1(f.weight(), w), nkref::set_vec1(f.bias(), b);
  Vec rm(std::size_t(C), 0.0), rv(std::size_t(C), 1.0);
  const Geometry k{N, C, C, S};
  for (int step = 1; step <= 4; ++step) {
    const Vec x = nkref::random_input<T>(std::size_t(k.size()), 50u + unsigned(step), 0.5 * step, 1.0 + 0.5 * step);
    const Vec dy = nkref::random_input<T>(std::size_t(k.size()), 60u + unsigned(step));
    const Run<T> got = run<T, 4, Eigen::RowMajor>(f, nchw, last, x, dy);
    check_against(widen(got), reference(k, x, dy, w, b, 1e-5), tol_of<T>(), "training step");
    const double m = momentum ? *momentum : 1.0 / step;
    for (Index c = 0; c < C; ++c) {
      long double am = 0, av = 0;
      for (Index n = 0; n < N; ++n) {
        long double mean = 0, var = 0;
        for (Index s = 0; s < S; ++s) mean += x[std::size_t(k.at(n, c, s))];
        mean /= S;
        for (Index s = 0; s < S; ++s)
          var += (x[std::size_t(k.at(n, c, s))] - mean) * (x[std::size_t(k.at(n, c, s))] - mean);
        am += mean, av += var / (S - 1);
      }
      rm[std::size_t(c)] = double((1 - m) * rm[std::size_t(c)] + m * am / N);
      rv[std::size_t(c)] = double((1 - m) * rv[std::size_t(c)] + m * av / N);
    }
    const auto mm = nkref::compare(nkref::vec1(f.running_mean()), rm, tol, tol, "running_mean");
    const auto mv = nkref::compare(nkref::vec1(f.running_var()), rv, tol, tol, "running_var");
    INFO("step " << step << "\n" << mm.str() << "\n" << mv.str());
    CHECK((mm.ok && mv.ok));
    CHECK(f.num_batches_tracked() == step);
  }
  // Eval: the running statistics for every sample; backward with them is the constant-stats gradient.
  f.eval();
  const Vec x = nkref::random_input<T>(std::size_t(k.size()), 70, 1.0, 2.0),
            dy = nkref::random_input<T>(std::size_t(k.size()), 71);
  const Vec rm_p = nkref::vec1(f.running_mean()), rv_p = nkref::vec1(f.running_var());
  const Run<T> got = run<T, 4, Eigen::RowMajor>(f, nchw, last, x, dy);
  CHECK(got.stats.source == normkit::StatsSource::Running);
  REQUIRE(got.mean.size() == std::size_t(N * C));
  for (Index n = 0; n < N; ++n)
    for (Index c = 0; c < C; ++c)
      CHECK(got.mean[std::size_t(n * C + c)] == double(static_cast<normkit::accum_t<T>>(rm_p[std::size_t(c)])));
  check_against(widen(got), reference(k, x, dy, w, b, 1e-5, &rm_p, &rv_p), tol_of<T>(), "eval");
  CHECK(f.num_batches_tracked() == 4);
  CHECK(nkref::vec1(f.running_mean()) == rm_p);
  // The statistics' origin, not the mode: train() then backward of the eval stats is still constant.
  f.train();
  const auto d = last ? last_dims<4>(nchw) : nchw;
  const auto tx = nkref::make_tensor<T, 4, Eigen::RowMajor>(d, last ? to_last(x, N, C, S) : x);
  const auto tdy = nkref::make_tensor<T, 4, Eigen::RowMajor>(d, last ? to_last(dy, N, C, S) : dy);
  Eigen::Tensor<T, 4, Eigen::RowMajor> tdx(d);
  f.backward(tx, tdy, got.stats, tdx);
  Vec dx = nkref::to_rowmajor(tdx);
  if (last) dx = from_last(dx, N, C, S);
  CHECK(dx == got.dx);
}

}  // namespace

TEST_CASE("InstanceNorm running statistics: momentum and cumulative, then eval", "[instance_norm][running]") {
  for (const bool last : {false, true}) {
    INFO("channels-last " << last);
    check_running_sequence<double, double>(0.1, last, 1e-12);
    check_running_sequence<double, double>(std::nullopt, last, 1e-12);
    check_running_sequence<double, double>(1.0, last, 1e-12);
    check_running_sequence<float, float>(0.1, last, 1e-5);
    check_running_sequence<float, float>(std::nullopt, last, 1e-5);
    check_running_sequence<Eigen::bfloat16, float>(0.3, last, 1e-5);
  }
  // Without tracking: instance statistics in eval too, nothing tracked.
  InstanceNorm<float> f(3);
  f.eval();
  CHECK(f.running_mean().size() == 0);
  Eigen::Tensor<float, 3, Eigen::RowMajor> x(2, 3, 4), y(2, 3, 4);
  x.setRandom();
  CHECK(f.forward(x, y).source == normkit::StatsSource::Batch);
  CHECK(f.num_batches_tracked() == 0);
}

namespace {

template <class Family, bool Tracked = false>
void check_numerics(bool last) {
  const Index N = 3, C = 8, G = Family::min_rank == 2 ? 4 : 8, S = 64;
  const std::array<Index, 4> nchw{N, C, 8, 8};
  const Geometry k{N, C, G, S};
  // Offsets 1e4 * (1 + group) with unit noise: the float statistics must keep their digits.
  Vec x = nkref::normal_vec(std::size_t(k.size()), 81);
  for (Index n = 0; n < N; ++n)
    for (Index c = 0; c < C; ++c)
      for (Index s = 0; s < S; ++s) x[std::size_t(k.at(n, c, s))] += 1e4 * double(1 + c / k.cpg());
  x = nkref::round_to<float>(x);
  // One constant group: (n 1, group 1).
  for (Index c = k.cpg(); c < 2 * k.cpg(); ++c)
    for (Index s = 0; s < S; ++s) x[std::size_t(k.at(1, c, s))] = 12345.5;
  const Vec dy = nkref::normal_vec(std::size_t(k.size()), 82);
  const Vec w = nkref::round_to<float>(nkref::normal_vec(std::size_t(C), 83, 1.0, 0.5));
  const Vec b = nkref::round_to<float>(nkref::normal_vec(std::size_t(C), 84));
  auto f = Family::template make<float, float>(G, C, true, last);
  nkref::set_vec1(f.weight(), w), nkref::set_vec1(f.bias(), b);
  const Run<float> got = run<float, 4, Eigen::RowMajor>(f, nchw, last, x, dy);
  const Ref want = reference(k, x, dy, w, b, 1e-5);
  const auto my = nkref::compare(got.y, want.y, 2e-4, 2e-4, "y at offset 1e4");
  const auto mdx = nkref::compare(got.dx, want.dx, 2e-3, 2e-4, "dx at offset 1e4");
  INFO("channels-last " << last << "\n" << my.str() << "\n" << mdx.str());
  CHECK(my.ok);
  CHECK(mdx.ok);
  for (Index c = k.cpg(); c < 2 * k.cpg(); ++c)
    for (Index s = 0; s < S; ++s) {
      REQUIRE(got.y[std::size_t(k.at(1, c, s))] == b[std::size_t(c)]);  // exactly the bias
      REQUIRE(std::isfinite(got.dx[std::size_t(k.at(1, c, s))]));
    }
  // A NaN in (n 2, group 0): that group's y are all NaN, every other value bit-identical.
  Vec xn = x;
  xn[std::size_t(k.at(2, 0, 5))] = std::numeric_limits<double>::quiet_NaN();
  auto f2 = Family::template make<float, float>(G, C, true, last);
  nkref::set_vec1(f2.weight(), w), nkref::set_vec1(f2.bias(), b);
  const Run<float> nan = run<float, 4, Eigen::RowMajor>(f2, nchw, last, xn, dy);
  for (Index n = 0; n < N; ++n)
    for (Index c = 0; c < C; ++c)
      for (Index s = 0; s < S; ++s) {
        const std::size_t e = std::size_t(k.at(n, c, s));
        if (n == 2 && c < k.cpg()) REQUIRE(std::isnan(nan.y[e]));
        else REQUIRE(std::memcmp(&nan.y[e], &got.y[e], sizeof(double)) == 0);
      }
}

}  // namespace

TEST_CASE("GroupNorm/InstanceNorm numerics per group: offsets, constant groups, NaN isolation",
          "[group_norm][instance_norm][numerics]") {
  for (const bool last : {false, true}) {
    check_numerics<GroupNormFamily>(last);
    check_numerics<InstanceNormFamily>(last);
  }
}

TEST_CASE("GroupNorm/InstanceNorm bad input: checks before any write", "[group_norm][instance_norm][errors]") {
  CHECK_THROWS_AS(GroupNorm<float>(3, 8), std::invalid_argument);
  CHECK_THROWS_WITH(GroupNorm<float>(3, 8), Catch::Contains("divisible by num_groups"));
  CHECK_THROWS_AS(GroupNorm<float>(0, 8), std::invalid_argument);
  CHECK_THROWS_AS(GroupNorm<float>(-2, 8), std::invalid_argument);
  CHECK_THROWS_AS(GroupNorm<float>(2, 0), std::invalid_argument);
  CHECK_THROWS_AS(GroupNorm<float>(2, 8, {-1.0, true, 1}), std::invalid_argument);
  CHECK_THROWS_AS(InstanceNorm<float>(0), std::invalid_argument);
  CHECK_THROWS_AS(InstanceNorm<float>(4, {1e-5, 1.5, false, true, 1}), std::invalid_argument);

  const float sentinel = 42.f;
  Eigen::Tensor<float, 4, Eigen::RowMajor> x(2, 6, 3, 3), y(2, 6, 3, 3);
  x.setRandom();
  y.setConstant(sentinel);
  const auto untouched = [&](const Eigen::Tensor<float, 4, Eigen::RowMajor>& t) {
    for (Index i = 0; i < t.size(); ++i)
      if (t.data()[i] != sentinel) return false;
    return true;
  };
  GroupNorm<float> gn(4, 8);  // 8 channels; x has 6
  try {
    gn.forward(x, y);
    FAIL("no throw");
  } catch (const normkit::shape_error& e) {
    const std::string m = e.what();
    CHECK_THAT(m, Catch::Contains("GroupNorm::forward") && Catch::Contains("x has dimensions [2, 6, 3, 3]") &&
                      Catch::Contains("num_channels is 8") && Catch::Contains("6 channels"));
  }
  CHECK(untouched(y));
  GroupNorm<float> gn_last(2, 6, {1e-5, true, -1});  // channels-last: the last axis has 3
  CHECK_THROWS_AS(gn_last.forward(x, y), normkit::shape_error);
  GroupNorm<float> gn_axis(2, 6, {1e-5, true, 2});
  CHECK_THROWS_WITH(gn_axis.forward(x, y), Catch::Contains("channel_axis 2 must be 1 or the last axis"));
  CHECK(untouched(y));

  GroupNorm<float> ok(3, 6);
  Eigen::Tensor<float, 4, Eigen::RowMajor> y2(2, 6, 3, 4);
  y2.setConstant(sentinel);
  CHECK_THROWS_WITH(ok.forward(x, y2), Catch::Contains("y has dimensions [2, 6, 3, 4] but x has [2, 6, 3, 3]"));
  const auto stats = ok.forward(x, y);
  Eigen::Tensor<float, 4, Eigen::RowMajor> dx(2, 6, 3, 3);
  dx.setConstant(sentinel);
  normkit::NormStats<float> short_stats = stats;
  short_stats.rstd = Eigen::Tensor<float, 1>(5);
  CHECK_THROWS_WITH(ok.backward(x, y, short_stats, dx), Catch::Contains("stats.rstd has dimensions [5] but [6]"));
  CHECK(untouched(dx));
  ok.weight() = Eigen::Tensor<float, 1>(5);
  CHECK_THROWS_WITH(ok.backward(x, y, stats, dx), Catch::Contains("weight() has dimensions [5] but [6]"));
  CHECK(untouched(dx));
  Eigen::Tensor<float, 1> r1(6);
  CHECK_THROWS_AS(ok.forward(r1, r1), normkit::shape_error);  // rank 1

  // InstanceNorm: rank >= 3; one spatial element only without instance statistics.
  InstanceNormOptions o;
  o.track_running_stats = true;
  InstanceNorm<float> in(6, o);
  Eigen::Tensor<float, 2, Eigen::RowMajor> x2(2, 6), y2d(2, 6);
  CHECK_THROWS_WITH(in.forward(x2, y2d), Catch::Contains("needs rank >= 3"));
  Eigen::Tensor<float, 4, Eigen::RowMajor> x1(2, 6, 1, 1), y1(2, 6, 1, 1);
  x1.setRandom();
  y1.setConstant(sentinel);
  CHECK_THROWS_WITH(in.forward(x1, y1), Catch::Contains("expected more than 1 spatial element"));
  CHECK(in.num_batches_tracked() == 0);
  for (Index c = 0; c < 6; ++c) CHECK((in.running_mean()(c) == 0.f && in.running_var()(c) == 1.f));
  for (Index i = 0; i < y1.size(); ++i) CHECK(y1.data()[i] == sentinel);
  in.eval();  // running statistics: one spatial element is fine
  CHECK_NOTHROW(in.forward(x1, y1));
  InstanceNorm<float> in8(8);
  CHECK_THROWS_WITH(in8.forward(x, y),
                    Catch::Contains("InstanceNorm::forward") && Catch::Contains("num_channels is 8"));
}

namespace {

template <class T, class P, class Family>
void check_invariance_and_in_place(const std::array<Index, 4>& nchw, Index G, bool last) {
  const Index N = nchw[0], C = nchw[1], S = nchw[2] * nchw[3];
  const Vec x = nkref::random_input<T>(std::size_t(N * C * S), 91, 2.0, 3.0);
  const Vec dy = nkref::random_input<T>(std::size_t(N * C * S), 92);
  const auto make = [&] {
    auto f = Family::template make<T, P>(G, C, true, last);
    nkref::set_vec1(f.weight(), nkref::normal_vec(std::size_t(C), 93, 1.0, 0.5));
    nkref::set_vec1(f.bias(), nkref::normal_vec(std::size_t(C), 94));
    return f;
  };
  const auto same = [](const Vec& a, const Vec& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
  };
  auto f0 = make();
  const Run<T> serial = run<T, 4, Eigen::RowMajor>(f0, nchw, last, x, dy);
  for (int threads = 1; threads <= 4; ++threads) {
    Eigen::ThreadPool pool(threads);
    Eigen::ThreadPoolDevice device(&pool, threads);
    auto f = make();
    const Run<T> got = run<T, 4, Eigen::RowMajor>(f, nchw, last, x, dy, &device);
    INFO("threads " << threads << " channels-last " << last);
    CHECK(same(got.y, serial.y));
    CHECK(same(got.dx, serial.dx));
    CHECK(same(got.mean, serial.mean));
    CHECK(same(got.rstd, serial.rstd));
    CHECK(same(got.dw, serial.dw));
    CHECK(same(got.db, serial.db));
  }
  // In place: y on x, dx on dy (RowMajor and ColMajor storage).
  const auto d = last ? last_dims<4>(nchw) : nchw;
  const auto in_place = [&](auto tag) {
    constexpr int L = decltype(tag)::value;
    auto f = make();
    auto t = nkref::make_tensor<T, 4, L>(d, last ? to_last(x, N, C, S) : x);
    const auto tx = t;
    const auto stats = f.forward(t, t);
    auto g = nkref::make_tensor<T, 4, L>(d, last ? to_last(dy, N, C, S) : dy);
    const auto grads = f.backward(tx, g, stats, g);
    auto f2 = make();
    Eigen::Tensor<T, 4, L> y(d), dx(d);
    const auto tdy = nkref::make_tensor<T, 4, L>(d, last ? to_last(dy, N, C, S) : dy);
    const auto stats2 = f2.forward(tx, y);
    const auto grads2 = f2.backward(tx, tdy, stats2, dx);
    CHECK(nkref::bits_equal(t, y));
    CHECK(nkref::bits_equal(g, dx));
    CHECK(nkref::bits_equal(grads.weight, grads2.weight));
    CHECK(nkref::bits_equal(stats.rstd, stats2.rstd));
  };
  in_place(std::integral_constant<int, Eigen::RowMajor>{});
  in_place(std::integral_constant<int, Eigen::ColMajor>{});
}

// Batch invariance where it is easiest to break: a batch whose output is large enough to be
// streamed (tuning::kStreamBytes), against each sample run alone (half of it: not streamed).
template <class Family>
void check_sample_alone(const std::array<Index, 4>& nchw, Index G, bool last) {
  const Index N = nchw[0], C = nchw[1], S = nchw[2] * nchw[3], size = C * S;
  REQUIRE(normkit::core::stream_output<float>(N * size));
  REQUIRE_FALSE(normkit::core::stream_output<float>(size));
  const Vec x = nkref::random_input<float>(std::size_t(N * size), 95, 1.0, 2.0);
  const Vec dy = nkref::random_input<float>(std::size_t(N * size), 96);
  auto f = Family::template make<float, float>(G, C, true, last);
  const Run<float> batch = run<float, 4, Eigen::RowMajor>(f, nchw, last, x, dy);
  const std::size_t groups = std::size_t(Family::groups(G, C));
  for (Index n = 0; n < N; ++n) {
    const auto part = [&](const Vec& v, std::size_t len) {
      return Vec(v.begin() + std::ptrdiff_t(std::size_t(n) * len),
                 v.begin() + std::ptrdiff_t(std::size_t(n + 1) * len));
    };
    const Run<float> alone = run<float, 4, Eigen::RowMajor>(f, {1, C, nchw[2], nchw[3]}, last,
                                                            part(x, std::size_t(size)), part(dy, std::size_t(size)));
    INFO("sample " << n << " channels-last " << last);
    CHECK(alone.y == part(batch.y, std::size_t(size)));
    CHECK(alone.dx == part(batch.dx, std::size_t(size)));
    CHECK(alone.mean == part(batch.mean, groups));
    CHECK(alone.rstd == part(batch.rstd, groups));
  }
}

}  // namespace

TEST_CASE("GroupNorm/InstanceNorm: a sample alone gives the bits it gets in a streamed batch",
          "[group_norm][instance_norm][invariance]") {
  for (const bool last : {false, true}) {
    check_sample_alone<GroupNormFamily>({2, 64, 128, 128}, 16, last);
    check_sample_alone<InstanceNormFamily>({2, 64, 128, 128}, 64, last);
  }
}

TEST_CASE("GroupNorm/InstanceNorm invariance (pools of 1-4 threads) and in place",
          "[group_norm][instance_norm][threads]") {
  for (const bool last : {false, true}) {
    check_invariance_and_in_place<float, float, GroupNormFamily>({8, 64, 32, 32}, 32, last);
    check_invariance_and_in_place<float, float, GroupNormFamily>({3, 20, 7, 9}, 5, last);
    check_invariance_and_in_place<Eigen::bfloat16, float, GroupNormFamily>({4, 32, 16, 16}, 8, last);
    check_invariance_and_in_place<float, float, InstanceNormFamily>({8, 64, 28, 28}, 64, last);
    check_invariance_and_in_place<double, double, InstanceNormFamily>({2, 6, 5, 5}, 6, last);
  }
}
