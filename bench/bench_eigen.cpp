// bench/bench_eigen.cpp — baseline (b): each layer written as plain Eigen Tensor expressions, the
// way a user of the Tensor module would write it (reductions with .mean()/.sum(), reshape +
// broadcast, one .device() assignment per intermediate). t1 runs on Eigen::DefaultDevice, t>1 on a
// Eigen::ThreadPoolDevice. Small intermediates (per row / per channel) are preallocated.
// GCC 12 reports -W(maybe-)uninitialized inside its own avx512fintrin.h (the `__m512 __Y = __Y;`
// idiom of _mm512_undefined_ps, GCC bug 105593, fixed in GCC 13) when Eigen's AVX-512 packet code
// is inlined here; it is a false positive, silenced for this file only.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include "common.hpp"

namespace nkbench {
namespace {

template <class T>
using Map2 = Eigen::TensorMap<Eigen::Tensor<T, 2, Eigen::RowMajor>>;
template <class T>
using Map3 = Eigen::TensorMap<Eigen::Tensor<T, 3, Eigen::RowMajor>>;
template <class T>
using Vec = Eigen::Tensor<T, 1, Eigen::RowMajor>;
using A1 = Eigen::array<Index, 1>;
using A2 = Eigen::array<Index, 2>;
using A3 = Eigen::array<Index, 3>;

// ---- LayerNorm / RMSNorm over the last axis of (R, F) --------------------------------------

template <class T>
struct RowState {
  Vec<T> w, b, mean, rstd, mg, mgx, dw, db;
  explicit RowState(Index R, Index F) : w(F), b(F), mean(R), rstd(R), mg(R), mgx(R), dw(F), db(F) {
    fill_random(w.data(), static_cast<std::size_t>(F), 11, 0.5, 1.5);
    fill_random(b.data(), static_cast<std::size_t>(F), 12, -0.5, 0.5);
    mean.setZero();
    rstd.setZero();
  }
};

template <class T, class Dev>
void ln_fwd(const Dev& d, bool rms, const Map2<T>& x, Map2<T>& y, RowState<T>& s, T eps) {
  const Index R = x.dimension(0), F = x.dimension(1);
  const A1 red{1};
  const A2 col{R, 1}, bc{1, F}, row{1, F}, br{R, 1};
  if (!rms) {
    s.mean.device(d) = x.mean(red);
    auto xc = x - s.mean.reshape(col).broadcast(bc);
    s.rstd.device(d) = (xc.square().mean(red) + eps).rsqrt();
    y.device(d) = xc * s.rstd.reshape(col).broadcast(bc) * s.w.reshape(row).broadcast(br) +
                  s.b.reshape(row).broadcast(br);
  } else {
    s.rstd.device(d) = (x.square().mean(red) + eps).rsqrt();
    y.device(d) = x * s.rstd.reshape(col).broadcast(bc) * s.w.reshape(row).broadcast(br);
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w   (RMSNorm: without mean(g))
// dw = sum_rows dy * xhat, db = sum_rows dy (LayerNorm only)
template <class T, class Dev>
void ln_bwd(const Dev& d, bool rms, const Map2<T>& x, const Map2<T>& dy, Map2<T>& dx, RowState<T>& s) {
  const Index R = x.dimension(0), F = x.dimension(1);
  const A1 red{1}, red0{0};
  const A2 col{R, 1}, bc{1, F}, row{1, F}, br{R, 1};
  auto brstd = s.rstd.reshape(col).broadcast(bc);
  auto g = dy * s.w.reshape(row).broadcast(br);
  if (!rms) {
    auto xhat = (x - s.mean.reshape(col).broadcast(bc)) * brstd;
    s.mg.device(d) = g.mean(red);
    s.mgx.device(d) = (g * xhat).mean(red);
    dx.device(d) = brstd * (g - s.mg.reshape(col).broadcast(bc) - xhat * s.mgx.reshape(col).broadcast(bc));
    s.dw.device(d) = (dy * xhat).sum(red0);
    s.db.device(d) = dy.sum(red0);
  } else {
    auto xhat = x * brstd;
    s.mgx.device(d) = (g * xhat).mean(red);
    dx.device(d) = brstd * (g - xhat * s.mgx.reshape(col).broadcast(bc));
    s.dw.device(d) = (dy * xhat).sum(red0);
  }
}

template <class T>
void run_rows(benchmark::State& state, const Case c) {
  const Index R = c.rows(), F = c.features();
  Buffers<T> buf = buffers<T>(static_cast<std::size_t>(c.elements()));
  Map2<T> x(buf.x, R, F), y(buf.y, R, F), dy(buf.dy, R, F), dx(buf.dx, R, F);
  RowState<T> s(R, F);
  const bool rms = c.op == Op::RMSNorm;
  const T eps = static_cast<T>(rms ? 1e-6 : 1e-5);
  auto call = [&] {
    if (c.threads == 1) {
      const Eigen::DefaultDevice d;
      if (c.dir == Dir::Fwd) ln_fwd(d, rms, x, y, s, eps);
      else ln_bwd(d, rms, x, dy, dx, s);
    } else {
      const Eigen::ThreadPoolDevice& d = pool_device(c.threads);
      if (c.dir == Dir::Fwd) ln_fwd(d, rms, x, y, s, eps);
      else ln_bwd(d, rms, x, dy, dx, s);
    }
  };
  ln_fwd(Eigen::DefaultDevice(), rms, x, y, s, eps);  // statistics for backward
  if (warm_up(c.bytes())) call();                     // warm-up
  for (auto _ : state) {
    call();
    benchmark::ClobberMemory();
  }
  set_bytes(state, c.bytes());
}

// ---- BatchNorm -------------------------------------------------------------------------------
// NCHW is viewed as (N, C, H*W) and reduced over {0, 2}; channels-last and (N, C) as (M, C)
// reduced over {0}.

template <class T>
struct ChanState {
  Vec<T> w, b, mean, var, rstd, rmean, rvar, scale, shift, dw, db, c1, c2;
  explicit ChanState(Index C)
      : w(C), b(C), mean(C), var(C), rstd(C), rmean(C), rvar(C), scale(C), shift(C), dw(C), db(C), c1(C), c2(C) {
    fill_random(w.data(), static_cast<std::size_t>(C), 21, 0.5, 1.5);
    fill_random(b.data(), static_cast<std::size_t>(C), 22, -0.5, 0.5);
    rmean.setZero();
    rvar.setConstant(T(1));
    mean.setZero();
    rstd.setConstant(T(1));
  }
};

// Broadcast a per-channel vector to the data shape.
template <class T, int R>
struct Bc;
template <class T>
struct Bc<T, 3> {
  Index O, C, I;
  auto operator()(const Vec<T>& v) const { return v.reshape(A3{1, C, 1}).broadcast(A3{O, 1, I}); }
  static Eigen::array<Index, 2> red() { return {0, 2}; }
};
template <class T>
struct Bc<T, 2> {
  Index O, C;
  auto operator()(const Vec<T>& v) const { return v.reshape(A2{1, C}).broadcast(A2{O, 1}); }
  static Eigen::array<Index, 1> red() { return {0}; }
};

template <class T, class Dev, class MapT, class BcT>
void bn_fwd_train(const Dev& d, const MapT& x, MapT& y, ChanState<T>& s, const BcT& bc, T eps, T n) {
  const auto red = BcT::red();
  const T m = T(0.1);
  s.mean.device(d) = x.mean(red);
  s.var.device(d) = (x - bc(s.mean)).square().mean(red);
  s.rstd.device(d) = (s.var + eps).rsqrt();
  s.scale.device(d) = s.w * s.rstd;
  s.shift.device(d) = s.b - s.mean * s.scale;
  y.device(d) = x * bc(s.scale) + bc(s.shift);
  s.rmean.device(d) = s.rmean * (T(1) - m) + s.mean * m;
  s.rvar.device(d) = s.rvar * (T(1) - m) + s.var * (m * n / (n - T(1)));
}

template <class T, class Dev, class MapT, class BcT>
void bn_fwd_eval(const Dev& d, const MapT& x, MapT& y, ChanState<T>& s, const BcT& bc, T eps) {
  s.scale.device(d) = s.w * (s.rvar + eps).rsqrt();
  s.shift.device(d) = s.b - s.rmean * s.scale;
  y.device(d) = x * bc(s.scale) + bc(s.shift);
}

// dx = w * rstd * (dy - db / n - xhat * dw / n), dw = sum dy * xhat, db = sum dy
template <class T, class Dev, class MapT, class BcT>
void bn_bwd(const Dev& d, const MapT& x, const MapT& dy, MapT& dx, ChanState<T>& s, const BcT& bc, T n) {
  const auto red = BcT::red();
  auto xhat = (x - bc(s.mean)) * bc(s.rstd);
  s.db.device(d) = dy.sum(red);
  s.dw.device(d) = (dy * xhat).sum(red);
  s.c1.device(d) = s.w * s.rstd;
  s.c2.device(d) = s.dw / n;
  dx.device(d) = bc(s.c1) * (dy - bc(s.db) / n - xhat * bc(s.c2));
}

template <class T, class MapT, class BcT>
void run_bn_impl(benchmark::State& state, const Case& c, MapT x, MapT y, MapT dy, MapT dx, const BcT& bc) {
  ChanState<T> s(c.channels());
  const T eps = T(1e-5);
  const T n = static_cast<T>(c.elements() / c.channels());
  auto call_on = [&](const auto& d) {
    switch (c.dir) {
      case Dir::Fwd: bn_fwd_train(d, x, y, s, bc, eps, n); break;
      case Dir::Bwd: bn_bwd(d, x, dy, dx, s, bc, n); break;
      case Dir::FwdEval: bn_fwd_eval(d, x, y, s, bc, eps); break;
    }
  };
  auto call = [&] {
    if (c.threads == 1) call_on(Eigen::DefaultDevice());
    else call_on(pool_device(c.threads));
  };
  bn_fwd_train(Eigen::DefaultDevice(), x, y, s, bc, eps, n);  // statistics for backward / eval
  if (warm_up(c.bytes())) call();                             // warm-up
  for (auto _ : state) {
    call();
    benchmark::ClobberMemory();
  }
  set_bytes(state, c.bytes());
}

template <class T>
void run_bn(benchmark::State& state, const Case c) {
  Buffers<T> buf = buffers<T>(static_cast<std::size_t>(c.elements()));
  const Index O = c.outer(), C = c.channels(), I = c.inner();
  if (c.layout == BnLayout::NCHW) {
    run_bn_impl<T>(state, c, Map3<T>(buf.x, O, C, I), Map3<T>(buf.y, O, C, I), Map3<T>(buf.dy, O, C, I),
                   Map3<T>(buf.dx, O, C, I), Bc<T, 3>{O, C, I});
  } else {
    run_bn_impl<T>(state, c, Map2<T>(buf.x, O, C), Map2<T>(buf.y, O, C), Map2<T>(buf.dy, O, C), Map2<T>(buf.dx, O, C),
                   Bc<T, 2>{O, C});
  }
}

template <class T>
void run(benchmark::State& state, const Case c) {
  if (c.op == Op::BatchNorm) run_bn<T>(state, c);
  else run_rows<T>(state, c);
}

}  // namespace

void register_eigen(const Case& c) {
  // fp32 and fp64 only: no bf16 expression baseline, and scaled inputs (x1e30) are normkit-only.
  if (c.dtype == Dtype::BF16 || c.input_scale != 1) return;
  if (c.col_major) return;  // ColMajor LayerNorm/RMSNorm: normkit against copy only
  if (c.op == Op::GroupNorm || c.op == Op::InstanceNorm) return;  // copy and PyTorch are their baselines
  configure(benchmark::RegisterBenchmark(c.name("eigen").c_str(), [c](benchmark::State& st) {
    if (c.dtype == Dtype::FP64) run<double>(st, c);
    else run<float>(st, c);
  }));
}

}  // namespace nkbench
