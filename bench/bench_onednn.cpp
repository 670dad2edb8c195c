// bench/bench_onednn.cpp — baseline (d): oneDNN's layer_normalization and batch_normalization
// primitives (forward training, backward with diff scale/shift, and BatchNorm inference with
// global statistics), fp32 only (oneDNN has no f64 normalization), working in place on the same
// buffers as the other implementations (user-pointer memory objects, plain formats ab / nchw /
// nhwc / nc). oneDNN has no RMSNorm before v3.1, so RMSNorm has no oneDNN entry.
//
// Threads: Debian's libdnnl is built with the OpenMP runtime; each oneDNN benchmark calls
// omp_set_num_threads(t) before creating and running its primitive (oneDNN reads
// omp_get_max_threads() at execution). OpenMP workers spin for a short while after a parallel
// region (GOMP_SPINCOUNT); export OMP_WAIT_POLICY=passive to rule out interference with the other
// threaded cases (see bench/README.md).
//
// oneDNN 2.6 rejects a backward call with use_shift unless DNNL_ARG_SHIFT is passed too.
//
// Byte convention as everywhere: oneDNN's BatchNorm training forward is also charged x + y only.
#include "common.hpp"

#if defined(NKBENCH_HAVE_DNNL)

#include <omp.h>

#include <unordered_map>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

namespace nkbench {
namespace {

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;
using dims_t = dnnl::memory::dims;

void run_ln_impl(benchmark::State& state, const Case& c) {
  omp_set_num_threads(c.threads);
  const Index R = c.rows(), F = c.features();
  Buffers<float> buf = buffers<float>(static_cast<std::size_t>(c.elements()));
  dnnl::engine& eng = engine();
  dnnl::stream s(eng);
  const dnnl::memory::desc data_md({R, F}, dt::f32, tag::ab);
  const dnnl::memory::desc stat_md({R}, dt::f32, tag::a);
  const dnnl::memory::desc par_md({F}, dt::f32, tag::a);
  std::vector<float> w(static_cast<std::size_t>(F)), b(w.size()), dw(w.size()), db(w.size());
  std::vector<float> mean(static_cast<std::size_t>(R)), var(mean.size());
  fill_random(w.data(), w.size(), 11, 0.5, 1.5);
  fill_random(b.data(), b.size(), 12, -0.5, 0.5);
  dnnl::memory x(data_md, eng, buf.x), y(data_md, eng, buf.y), dy(data_md, eng, buf.dy), dx(data_md, eng, buf.dx);
  dnnl::memory mw(par_md, eng, w.data()), mb(par_md, eng, b.data()), mdw(par_md, eng, dw.data()),
      mdb(par_md, eng, db.data());
  dnnl::memory mmean(stat_md, eng, mean.data()), mvar(stat_md, eng, var.data());
  const auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  const float eps = 1e-5f;

  dnnl::layer_normalization_forward::primitive_desc fwd_pd(
      dnnl::layer_normalization_forward::desc(dnnl::prop_kind::forward_training, data_md, stat_md, eps, flags), eng);
  dnnl::layer_normalization_forward fwd(fwd_pd);
  std::unordered_map<int, dnnl::memory> fwd_args = {{DNNL_ARG_SRC, x},      {DNNL_ARG_DST, y},
                                                    {DNNL_ARG_MEAN, mmean}, {DNNL_ARG_VARIANCE, mvar},
                                                    {DNNL_ARG_SCALE, mw},   {DNNL_ARG_SHIFT, mb}};
  fwd.execute(s, fwd_args);  // statistics for backward
  s.wait();

  dnnl::primitive prim = fwd;
  std::unordered_map<int, dnnl::memory> args = fwd_args;
  if (c.dir == Dir::Bwd) {
    dnnl::layer_normalization_backward::primitive_desc bwd_pd(
        dnnl::layer_normalization_backward::desc(dnnl::prop_kind::backward, data_md, data_md, stat_md, eps, flags), eng,
        fwd_pd);
    prim = dnnl::layer_normalization_backward(bwd_pd);
    args = {{DNNL_ARG_SRC, x},      {DNNL_ARG_DIFF_DST, dy},    {DNNL_ARG_DIFF_SRC, dx},
            {DNNL_ARG_MEAN, mmean}, {DNNL_ARG_VARIANCE, mvar},  {DNNL_ARG_SCALE, mw},
            {DNNL_ARG_SHIFT, mb},   {DNNL_ARG_DIFF_SCALE, mdw}, {DNNL_ARG_DIFF_SHIFT, mdb}};
  }
  if (warm_up(c.bytes())) {  // warm-up
    prim.execute(s, args);
    s.wait();
  }
  for (auto _ : state) {
    prim.execute(s, args);
    s.wait();
  }
  set_bytes(state, c.bytes());
}

void run_bn_impl(benchmark::State& state, const Case& c) {
  omp_set_num_threads(c.threads);
  Buffers<float> buf = buffers<float>(static_cast<std::size_t>(c.elements()));
  dnnl::engine& eng = engine();
  dnnl::stream s(eng);
  dims_t dims;
  tag fmt = tag::nchw;
  switch (c.layout) {
    case BnLayout::NCHW:
      dims = {c.dims[0], c.dims[1], c.dims[2], c.dims[3]};
      fmt = tag::nchw;
      break;
    case BnLayout::NHWC:
      dims = {c.dims[0], c.dims[3], c.dims[1], c.dims[2]};
      fmt = tag::nhwc;
      break;
    case BnLayout::NC:
      dims = {c.dims[0], c.dims[1]};
      fmt = tag::nc;
      break;
    case BnLayout::None: return;
  }
  const Index C = c.channels();
  const dnnl::memory::desc data_md(dims, dt::f32, fmt);
  const dnnl::memory::desc par_md({C}, dt::f32, tag::a);
  std::vector<float> w(static_cast<std::size_t>(C)), b(w.size()), dw(w.size()), db(w.size()), mean(w.size()),
      var(w.size());
  fill_random(w.data(), w.size(), 21, 0.5, 1.5);
  fill_random(b.data(), b.size(), 22, -0.5, 0.5);
  dnnl::memory x(data_md, eng, buf.x), y(data_md, eng, buf.y), dy(data_md, eng, buf.dy), dx(data_md, eng, buf.dx);
  dnnl::memory mw(par_md, eng, w.data()), mb(par_md, eng, b.data()), mdw(par_md, eng, dw.data()),
      mdb(par_md, eng, db.data()), mmean(par_md, eng, mean.data()), mvar(par_md, eng, var.data());
  const auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  const float eps = 1e-5f;

  dnnl::batch_normalization_forward::primitive_desc fwd_pd(
      dnnl::batch_normalization_forward::desc(dnnl::prop_kind::forward_training, data_md, eps, flags), eng);
  dnnl::batch_normalization_forward fwd(fwd_pd);
  std::unordered_map<int, dnnl::memory> fwd_args = {{DNNL_ARG_SRC, x},      {DNNL_ARG_DST, y},
                                                    {DNNL_ARG_MEAN, mmean}, {DNNL_ARG_VARIANCE, mvar},
                                                    {DNNL_ARG_SCALE, mw},   {DNNL_ARG_SHIFT, mb}};
  fwd.execute(s, fwd_args);  // statistics for backward / eval
  s.wait();

  dnnl::primitive prim = fwd;
  std::unordered_map<int, dnnl::memory> args = fwd_args;
  if (c.dir == Dir::Bwd) {
    dnnl::batch_normalization_backward::primitive_desc bwd_pd(
        dnnl::batch_normalization_backward::desc(dnnl::prop_kind::backward, data_md, data_md, eps, flags), eng, fwd_pd);
    prim = dnnl::batch_normalization_backward(bwd_pd);
    args = {{DNNL_ARG_SRC, x},      {DNNL_ARG_DIFF_DST, dy},    {DNNL_ARG_DIFF_SRC, dx},
            {DNNL_ARG_MEAN, mmean}, {DNNL_ARG_VARIANCE, mvar},  {DNNL_ARG_SCALE, mw},
            {DNNL_ARG_SHIFT, mb},   {DNNL_ARG_DIFF_SCALE, mdw}, {DNNL_ARG_DIFF_SHIFT, mdb}};
  } else if (c.dir == Dir::FwdEval) {  // mean/variance from the training pass above are the global stats
    dnnl::batch_normalization_forward::primitive_desc inf_pd(
        dnnl::batch_normalization_forward::desc(dnnl::prop_kind::forward_inference, data_md, eps,
                                                flags | dnnl::normalization_flags::use_global_stats),
        eng);
    prim = dnnl::batch_normalization_forward(inf_pd);
  }
  if (warm_up(c.bytes())) {  // warm-up
    prim.execute(s, args);
    s.wait();
  }
  for (auto _ : state) {
    prim.execute(s, args);
    s.wait();
  }
  set_bytes(state, c.bytes());
}

template <class Fn>
void guarded(benchmark::State& state, Fn&& fn) {
  try {
    fn();
  } catch (const dnnl::error& e) {
    state.SkipWithError(e.what());
  }
}

void run_ln(benchmark::State& state, const Case c) {
  guarded(state, [&] { run_ln_impl(state, c); });
}
void run_bn(benchmark::State& state, const Case c) {
  guarded(state, [&] { run_bn_impl(state, c); });
}

}  // namespace

bool onednn_available() { return true; }

void register_onednn(const Case& c) {
  // fp32 only (no bf16 baseline here either), no RMSNorm; scaled inputs (x1e30) are normkit-only.
  if (c.dtype != Dtype::FP32 || c.input_scale != 1 || c.op == Op::RMSNorm) return;
  if (c.col_major) return;  // ColMajor LayerNorm/RMSNorm: normkit against copy only
  if (c.op == Op::GroupNorm || c.op == Op::InstanceNorm) return;  // not wired here (oneDNN's GN bwd is reference-only)
  if (c.op == Op::LayerNorm)
    configure(benchmark::RegisterBenchmark(c.name("onednn").c_str(), [c](benchmark::State& st) { run_ln(st, c); }));
  else configure(benchmark::RegisterBenchmark(c.name("onednn").c_str(), [c](benchmark::State& st) { run_bn(st, c); }));
}

}  // namespace nkbench

#else  // !NKBENCH_HAVE_DNNL

namespace nkbench {
bool onednn_available() { return false; }
void register_onednn(const Case&) {}
}  // namespace nkbench

#endif
