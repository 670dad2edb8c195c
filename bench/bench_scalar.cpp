// bench/bench_scalar.cpp — baseline (c): the textbook loops in plain C++, compiled with the same
// flags. Two-pass statistics (mean, then mean of squared deviations) accumulated in T, a third pass
// that normalizes; backward with the usual formulas. No intrinsics, no -ffast-math, so the
// reductions stay scalar (the element-wise passes may be auto-vectorized by the compiler).
// t>1: rows (LayerNorm/RMSNorm) or channels (BatchNorm) are split into contiguous ranges, one per
// thread; parameter gradients of LayerNorm/RMSNorm are summed from per-thread partials.
// bf16 (LayerNorm/RMSNorm only): x, y, dy, dx are Eigen::bfloat16, everything else is float — each
// load widens to float, the statistics and parameters are float, each store rounds to bfloat16
// (round to nearest even). The same loops with A = T for fp32 and fp64.
#include "common.hpp"

#include <cmath>
#include <vector>

namespace nkbench {
namespace {

// ---- LayerNorm / RMSNorm ----------------------------------------------------------------------

template <class T>
struct RowParams {
  std::vector<T> w, b, mean, rstd;
  std::vector<std::vector<T>> dw, db;  // per-thread partial parameter gradients
  RowParams(Index R, Index F, int threads)
      : w(static_cast<std::size_t>(F)), b(static_cast<std::size_t>(F)), mean(static_cast<std::size_t>(R)),
        rstd(static_cast<std::size_t>(R)),
        dw(static_cast<std::size_t>(threads), std::vector<T>(static_cast<std::size_t>(F))),
        db(static_cast<std::size_t>(threads), std::vector<T>(static_cast<std::size_t>(F))) {
    fill_random(w.data(), w.size(), 11, 0.5, 1.5);
    fill_random(b.data(), b.size(), 12, -0.5, 0.5);
  }
};

// T: storage of x, y, dy, dx; A: statistics, parameters and arithmetic (A = T for fp32/fp64,
// float for bf16). With A = T every cast below is a no-op.
template <class T, class A>
void ln_fwd_rows(bool rms, const T* x, T* y, Index r0, Index r1, Index F, RowParams<A>& p, A eps) {
  const A* w = p.w.data();
  const A* b = p.b.data();
  for (Index r = r0; r < r1; ++r) {
    const T* xr = x + r * F;
    T* yr = y + r * F;
    A mean = 0;
    if (!rms) {
      for (Index i = 0; i < F; ++i) mean += static_cast<A>(xr[i]);
      mean /= static_cast<A>(F);
    }
    A var = 0;
    for (Index i = 0; i < F; ++i) {
      const A d = static_cast<A>(xr[i]) - mean;
      var += d * d;
    }
    var /= static_cast<A>(F);
    const A rstd = A(1) / std::sqrt(var + eps);
    p.mean[static_cast<std::size_t>(r)] = mean;
    p.rstd[static_cast<std::size_t>(r)] = rstd;
    if (!rms) {
      for (Index i = 0; i < F; ++i) yr[i] = static_cast<T>((static_cast<A>(xr[i]) - mean) * rstd * w[i] + b[i]);
    } else {
      for (Index i = 0; i < F; ++i) yr[i] = static_cast<T>(static_cast<A>(xr[i]) * rstd * w[i]);
    }
  }
}

template <class T, class A>
void ln_bwd_rows(bool rms, const T* x, const T* dy, T* dx, Index r0, Index r1, Index F, RowParams<A>& p, int tid) {
  const A* w = p.w.data();
  A* dw = p.dw[static_cast<std::size_t>(tid)].data();
  A* db = p.db[static_cast<std::size_t>(tid)].data();
  for (Index i = 0; i < F; ++i) dw[i] = db[i] = 0;
  for (Index r = r0; r < r1; ++r) {
    const T* xr = x + r * F;
    const T* dyr = dy + r * F;
    T* dxr = dx + r * F;
    const A mean = p.mean[static_cast<std::size_t>(r)], rstd = p.rstd[static_cast<std::size_t>(r)];
    A sg = 0, sgx = 0;  // sum g, sum g * xhat
    for (Index i = 0; i < F; ++i) {
      const A dyi = static_cast<A>(dyr[i]);
      const A g = dyi * w[i];
      const A xhat = (static_cast<A>(xr[i]) - mean) * rstd;
      sg += g;
      sgx += g * xhat;
      dw[i] += dyi * xhat;
      db[i] += dyi;
    }
    const A mg = rms ? A(0) : sg / static_cast<A>(F), mgx = sgx / static_cast<A>(F);
    for (Index i = 0; i < F; ++i) {
      const A xhat = (static_cast<A>(xr[i]) - mean) * rstd;
      dxr[i] = static_cast<T>(rstd * (static_cast<A>(dyr[i]) * w[i] - mg - xhat * mgx));
    }
  }
}

template <class T, class A = T>
void run_rows(benchmark::State& state, const Case c) {
  const Index R = c.rows(), F = c.features();
  Buffers<T> buf = buffers<T>(static_cast<std::size_t>(c.elements()));
  RowParams<A> p(R, F, c.threads);
  const bool rms = c.op == Op::RMSNorm;
  const A eps = static_cast<A>(rms ? 1e-6 : 1e-5);
  auto body = [&](int tid, int parts) {
    Index r0 = 0, r1 = 0;
    split_range(R, tid, parts, 1, r0, r1);
    if (c.dir == Dir::Fwd) ln_fwd_rows(rms, buf.x, buf.y, r0, r1, F, p, eps);
    else ln_bwd_rows(rms, buf.x, buf.dy, buf.dx, r0, r1, F, p, tid);
  };
  auto call = [&] {
    parallel_run(c.threads, body);
    if (c.dir == Dir::Bwd) {  // reduce per-thread parameter gradients into slot 0
      for (int t = 1; t < c.threads; ++t)
        for (Index i = 0; i < F; ++i) {
          p.dw[0][static_cast<std::size_t>(i)] += p.dw[static_cast<std::size_t>(t)][static_cast<std::size_t>(i)];
          p.db[0][static_cast<std::size_t>(i)] += p.db[static_cast<std::size_t>(t)][static_cast<std::size_t>(i)];
        }
    }
  };
  ln_fwd_rows(rms, buf.x, buf.y, 0, R, F, p, eps);  // statistics for backward
  if (warm_up(c.bytes())) call();                   // warm-up
  for (auto _ : state) {
    call();
    benchmark::ClobberMemory();
  }
  set_bytes(state, c.bytes());
}

// ---- BatchNorm: x[(o * C + c) * I + i] ---------------------------------------------------------

template <class T>
struct ChanParams {
  std::vector<T> w, b, mean, var, rstd, rmean, rvar, dw, db;
  explicit ChanParams(Index C)
      : w(static_cast<std::size_t>(C)), b(w.size()), mean(w.size()), var(w.size()), rstd(w.size(), T(1)),
        rmean(w.size(), T(0)), rvar(w.size(), T(1)), dw(w.size()), db(w.size()) {
    fill_random(w.data(), w.size(), 21, 0.5, 1.5);
    fill_random(b.data(), b.size(), 22, -0.5, 0.5);
  }
};

template <class T>
struct BnView {
  Index O, C, I;
  T n;  // values per channel
  std::size_t at(Index o, Index c, Index i) const { return static_cast<std::size_t>((o * C + c) * I + i); }
};

// Channels [c0, c1). With I == 1 (channels-last, (N, C)) the channel loop is innermost so the
// memory is walked in order; with I > 1 (NCHW) the spatial loop is innermost.
template <class T>
void bn_fwd_train(const BnView<T>& v, const T* x, T* y, Index c0, Index c1, ChanParams<T>& p, T eps) {
  const T m = T(0.1);
  for (Index c = c0; c < c1; ++c) p.mean[static_cast<std::size_t>(c)] = p.var[static_cast<std::size_t>(c)] = 0;
  for (Index o = 0; o < v.O; ++o)
    for (Index c = c0; c < c1; ++c)
      for (Index i = 0; i < v.I; ++i) p.mean[static_cast<std::size_t>(c)] += x[v.at(o, c, i)];
  for (Index c = c0; c < c1; ++c) p.mean[static_cast<std::size_t>(c)] /= v.n;
  for (Index o = 0; o < v.O; ++o)
    for (Index c = c0; c < c1; ++c) {
      const T mu = p.mean[static_cast<std::size_t>(c)];
      for (Index i = 0; i < v.I; ++i) {
        const T d = x[v.at(o, c, i)] - mu;
        p.var[static_cast<std::size_t>(c)] += d * d;
      }
    }
  for (Index c = c0; c < c1; ++c) {
    const std::size_t k = static_cast<std::size_t>(c);
    p.var[k] /= v.n;
    p.rstd[k] = T(1) / std::sqrt(p.var[k] + eps);
    p.rmean[k] = (T(1) - m) * p.rmean[k] + m * p.mean[k];
    p.rvar[k] = (T(1) - m) * p.rvar[k] + m * p.var[k] * v.n / (v.n - T(1));
  }
  for (Index o = 0; o < v.O; ++o)
    for (Index c = c0; c < c1; ++c) {
      const std::size_t k = static_cast<std::size_t>(c);
      const T mu = p.mean[k], rs = p.rstd[k], w = p.w[k], b = p.b[k];
      for (Index i = 0; i < v.I; ++i) y[v.at(o, c, i)] = (x[v.at(o, c, i)] - mu) * rs * w + b;
    }
}

template <class T>
void bn_fwd_eval(const BnView<T>& v, const T* x, T* y, Index c0, Index c1, ChanParams<T>& p, T eps) {
  for (Index o = 0; o < v.O; ++o)
    for (Index c = c0; c < c1; ++c) {
      const std::size_t k = static_cast<std::size_t>(c);
      const T mu = p.rmean[k], rs = T(1) / std::sqrt(p.rvar[k] + eps), w = p.w[k], b = p.b[k];
      for (Index i = 0; i < v.I; ++i) y[v.at(o, c, i)] = (x[v.at(o, c, i)] - mu) * rs * w + b;
    }
}

template <class T>
void bn_bwd(const BnView<T>& v, const T* x, const T* dy, T* dx, Index c0, Index c1, ChanParams<T>& p) {
  for (Index c = c0; c < c1; ++c) p.dw[static_cast<std::size_t>(c)] = p.db[static_cast<std::size_t>(c)] = 0;
  for (Index o = 0; o < v.O; ++o)
    for (Index c = c0; c < c1; ++c) {
      const std::size_t k = static_cast<std::size_t>(c);
      const T mu = p.mean[k], rs = p.rstd[k];
      for (Index i = 0; i < v.I; ++i) {
        const std::size_t j = v.at(o, c, i);
        p.db[k] += dy[j];
        p.dw[k] += dy[j] * (x[j] - mu) * rs;
      }
    }
  for (Index o = 0; o < v.O; ++o)
    for (Index c = c0; c < c1; ++c) {
      const std::size_t k = static_cast<std::size_t>(c);
      const T mu = p.mean[k], rs = p.rstd[k], w = p.w[k];
      const T mdb = p.db[k] / v.n, mdw = p.dw[k] / v.n;
      for (Index i = 0; i < v.I; ++i) {
        const std::size_t j = v.at(o, c, i);
        dx[j] = w * rs * (dy[j] - mdb - (x[j] - mu) * rs * mdw);
      }
    }
}

template <class T>
void run_bn(benchmark::State& state, const Case c) {
  Buffers<T> buf = buffers<T>(static_cast<std::size_t>(c.elements()));
  const BnView<T> v{c.outer(), c.channels(), c.inner(), static_cast<T>(c.elements() / c.channels())};
  ChanParams<T> p(v.C);
  const T eps = T(1e-5);
  auto body = [&](int tid, int parts) {
    Index c0 = 0, c1 = 0;
    split_range(v.C, tid, parts, 1, c0, c1);
    switch (c.dir) {
      case Dir::Fwd: bn_fwd_train(v, buf.x, buf.y, c0, c1, p, eps); break;
      case Dir::Bwd: bn_bwd(v, buf.x, buf.dy, buf.dx, c0, c1, p); break;
      case Dir::FwdEval: bn_fwd_eval(v, buf.x, buf.y, c0, c1, p, eps); break;
    }
  };
  bn_fwd_train(v, buf.x, buf.y, 0, v.C, p, eps);          // statistics for backward / eval
  if (warm_up(c.bytes())) parallel_run(c.threads, body);  // warm-up
  for (auto _ : state) {
    parallel_run(c.threads, body);
    benchmark::ClobberMemory();
  }
  set_bytes(state, c.bytes());
}

template <class T>
void run(benchmark::State& state, const Case c) {
  if (c.op == Op::BatchNorm) run_bn<T>(state, c);
  else run_rows<T>(state, c);
}

}  // namespace

void register_scalar(const Case& c) {
  if (c.input_scale != 1) return;  // scaled inputs are normkit-only
  if (c.col_major) return;         // ColMajor LayerNorm/RMSNorm: normkit against copy only
  if (c.op == Op::GroupNorm || c.op == Op::InstanceNorm) return;  // copy and PyTorch are their baselines
  if (c.dtype == Dtype::BF16 && c.op == Op::BatchNorm) return;    // bf16: LayerNorm/RMSNorm loops only
  configure(benchmark::RegisterBenchmark(c.name("scalar").c_str(), [c](benchmark::State& st) {
    switch (c.dtype) {
      case Dtype::FP32: run<float>(st, c); break;
      case Dtype::FP64: run<double>(st, c); break;
      case Dtype::BF16: run_rows<Eigen::bfloat16, float>(st, c); break;
    }
  }));
}

}  // namespace nkbench
