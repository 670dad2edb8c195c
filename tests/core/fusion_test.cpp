// Tests for the core's fusion points (core/fusion.hpp) and the per-channel-in-group affine
// (core/norm_policies.hpp), through the entry points of core/groups.hpp:
//   LoadResidual  forward over h = x + alpha * r writes h rounded once to T, and y and the statistics
//                 bit for bit as a plain forward over that h; h may overlay x or r; whether h is
//                 stored by a pass of its own (in cache) or by the streamed sweep (formed again, or
//                 copied from a scratch row).
//   StoreAdd      backward writing dx = dx_norm + dh: for float/double bit for bit the plain backward
//                 followed by dx += dh; for bfloat16 with dx_norm's own rounding to T saved; dx may
//                 overlay dh.
//   Channel       GroupNorm's affine, NCHW ([1][N*G][C/G*HW]) and channels-last per sample
//                 ([HW][G][C/G]), against float64 formulas; per-channel gradients the same bits for
//                 any chunk order.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "normkit/core/groups.hpp"
#include "support/index_vector.hpp"
#include "support/reverse_executor.hpp"

namespace core = normkit::core;
using core::Index;
using normkit_test::ReverseExecutor;

namespace {

template <class T>
bool same_bits(const IndexVector<T>& a, const IndexVector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(T) * std::size_t(a.size())) == 0;
}

template <class T>
IndexVector<T> random_values(Index n, unsigned seed, float offset, float spread) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> z(0.f, 1.f);
  IndexVector<T> v(n);
  for (Index i = 0; i < n; ++i) v[i] = static_cast<T>(offset + spread * z(rng));
  return v;
}

// The shapes of the driver: rows, several runs per group, wide columns (panels), narrow columns
// (chunks of rows), each large enough in one case to be cut into several chunks.
const core::GroupShape kShapes[] = {{1, 37, 300}, {3, 70, 11},   {300, 70, 1}, {40, 600, 1},
                                    {5000, 9, 1}, {1, 300, 700}, {4, 64, 1031}};

template <class T, class A>
void check_residual_forward(const core::GroupShape& s, core::AffineAxis axis) {
  const Index total = s.size(), params = axis == core::AffineAxis::Element ? s.group_size() : s.groups;
  const A alpha = A(0.7);
  const IndexVector<T> x = random_values<T>(total, 1, 2.f, 1.f), r = random_values<T>(total, 2, -1.f, 3.f);
  const IndexVector<T> w = random_values<T>(params, 3, 1.f, 0.3f), b = random_values<T>(params, 4, 0.f, 1.f);
  core::NormParams<T> p;
  p.affine_axis = axis, p.weight = w.data(), p.bias = b.data();
  const auto forward = [&](const auto& load, T* y, IndexVector<A>& mean, IndexVector<A>& lo, IndexVector<A>& rstd) {
    mean = lo = rstd = IndexVector<A>(s.groups);
    core::forward_groups(ReverseExecutor{3}, load, core::StoreY<T>{y}, s, p,
                         core::StatsArrays<A>{mean.data(), lo.data(), rstd.data()}, core::StatsMode::Compute);
  };
  IndexVector<T> h(total), y(total), y_plain(total);
  IndexVector<A> mean, lo, rstd, mean_plain, lo_plain, rstd_plain;
  const core::ResidualSum<A, T> sum{x.data(), r.data(), alpha, h.data()};
  forward(core::LoadResidual<A, T>{&sum}, y.data(), mean, lo, rstd);
  for (Index i = 0; i < total; ++i) {
    // One rounding of the sum formed in A (with FMA where the kernels fuse: simd::madd).
    const T want = static_cast<T>(core::simd::madd(static_cast<A>(r[i]), alpha, static_cast<A>(x[i])));
    REQUIRE(std::memcmp(&h[i], &want, sizeof(T)) == 0);
  }
  forward(core::LoadX<T>{h.data()}, y_plain.data(), mean_plain, lo_plain, rstd_plain);
  CHECK(same_bits(y, y_plain));
  CHECK(same_bits(mean, mean_plain));
  CHECK(same_bits(lo, lo_plain));
  CHECK(same_bits(rstd, rstd_plain));
  // h over x, and h over r: every element of both is read before h is written there.
  IndexVector<T> hx = x, hr = r, y2(total);
  const core::ResidualSum<A, T> sum_over_x{hx.data(), r.data(), alpha, hx.data()};
  forward(core::LoadResidual<A, T>{&sum_over_x}, y2.data(), mean_plain, lo_plain, rstd_plain);
  CHECK(same_bits(hx, h));
  CHECK(same_bits(y2, y));
  const core::ResidualSum<A, T> sum_over_r{x.data(), hr.data(), alpha, hr.data()};
  forward(core::LoadResidual<A, T>{&sum_over_r}, y2.data(), mean_plain, lo_plain, rstd_plain);
  CHECK(same_bits(hr, h));
  CHECK(same_bits(y2, y));
}

template <class T, class A>
void check_add_backward(const core::GroupShape& s) {
  const Index total = s.size(), n = s.group_size();
  const IndexVector<T> x = random_values<T>(total, 5, 1.f, 2.f), dy = random_values<T>(total, 6, 0.f, 1.f);
  const IndexVector<T> dh = random_values<T>(total, 7, 0.f, 0.5f), w = random_values<T>(n, 8, 1.f, 0.3f);
  core::NormParams<T> p;
  p.weight = w.data();
  IndexVector<A> mean(s.groups), lo(s.groups), rstd(s.groups);
  IndexVector<T> y(total);
  core::forward_groups<A>(core::SerialExecutor{}, x.data(), y.data(), s, p,
                          core::StatsArrays<A>{mean.data(), lo.data(), rstd.data()}, core::StatsMode::Compute);
  const core::StatsArrays<const A> st{mean.data(), lo.data(), rstd.data()};
  IndexVector<T> dx_norm(total), dx(total), dw(n), db(n), dw2(n), db2(n);
  core::backward_groups<A>(ReverseExecutor{2}, x.data(), dy.data(), dx_norm.data(), s, p, st, core::StatsOrigin::Batch,
                           dw.data(), db.data());
  core::backward_groups<A>(ReverseExecutor{2}, x.data(), dy.data(), core::StoreAdd<T>{dx.data(), dh.data()}, s, p, st,
                           core::StatsOrigin::Batch, dw2.data(), db2.data());
  CHECK(same_bits(dw, dw2));
  CHECK(same_bits(db, db2));
  for (Index i = 0; i < total; ++i) {
    const T two_step = static_cast<T>(static_cast<A>(dx_norm[i]) + static_cast<A>(dh[i]));
    if (sizeof(T) == sizeof(A)) {
      REQUIRE(std::memcmp(&dx[i], &two_step, sizeof(T)) == 0);
    } else {
      // One rounding instead of two: the two-step form also carries dx_norm's rounding to T, half an
      // ulp at dx_norm's magnitude (many of the sum's where dh cancels it), and each result half an
      // ulp at the sum's.
      const auto ulp = [](double v) {
        return v == 0 ? 0.0 : std::ldexp(1.0, std::ilogb(v) - std::numeric_limits<T>::digits + 1);
      };
      REQUIRE(std::abs(double(dx[i]) - double(two_step)) <= 0.5 * ulp(double(dx_norm[i])) + ulp(double(two_step)));
    }
  }
  IndexVector<T> over_dh = dh;  // dx overlaying dh
  core::backward_groups<A>(ReverseExecutor{2}, x.data(), dy.data(), core::StoreAdd<T>{over_dh.data(), over_dh.data()},
                           s, p, st, core::StatsOrigin::Batch, dw2.data(), db2.data());
  CHECK(same_bits(over_dh, dx));
}

}  // namespace

TEST_CASE("load prologue: x + alpha * r, stored once, normalized as the stored h", "[core][fusion]") {
  for (const core::GroupShape& s : kShapes) {
    INFO("outer " << s.outer << ", groups " << s.groups << ", inner " << s.inner);
    check_residual_forward<float, float>(s, core::AffineAxis::Element);
    check_residual_forward<float, float>(s, core::AffineAxis::Group);
    check_residual_forward<double, double>(s, core::AffineAxis::Element);
    check_residual_forward<Eigen::bfloat16, float>(s, core::AffineAxis::Element);
  }
}

// h is stored by a pass of its own while the output is not streamed (every shape above); beyond
// tuning::kStreamBytes by the streamed sweep, which forms it again (float; rows of 2^20 values, too
// long to keep in L2) or copies it from the thread's scratch row, where a pass of its own kept it
// (bfloat16 rows of 1031): the same bits every way. Rows of 1031 values start at every 2-byte
// offset within a line, so that h's streaming stores and the scratch row's place take every
// alignment.
TEST_CASE("load prologue: h stored by the streamed sweep of a large row shape", "[core][fusion]") {
  const core::GroupShape s{1, 4, Index(1) << 20}, odd_rows{1, 4096, 1031};
  REQUIRE(core::stream_output<float>(s.size()));
  REQUIRE(core::stream_output<Eigen::bfloat16>(s.size()));
  REQUIRE(core::stream_output<Eigen::bfloat16>(odd_rows.size()));
  REQUIRE_FALSE(core::stream_output<float>(kShapes[0].size()));
  check_residual_forward<float, float>(s, core::AffineAxis::Element);
  check_residual_forward<Eigen::bfloat16, float>(s, core::AffineAxis::Element);
  check_residual_forward<Eigen::bfloat16, float>(odd_rows, core::AffineAxis::Element);
}

// stream_span: which values of a run the non-temporal stores write. Whole lines only (a line written
// partly by streaming and partly by ordinary stores costs a partial flush), starting at the first
// line boundary, ending at the last; every misalignment of the run within two lines, for packets
// narrower than a line (bfloat16), as wide as one (float on AVX-512) or either (double).
TEMPLATE_TEST_CASE("stream_span: streaming stores cover whole lines from the first boundary to the last",
                   "[core][fusion]", float, double, Eigen::bfloat16) {
  using T = TestType;
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
  constexpr Index line = std::max<Index>(normkit::core::tuning::kCacheLineBytes,
                                         Index(sizeof(T)) * normkit::core::simd::width<A>);
  constexpr Index per_line = line / Index(sizeof(T));
  alignas(128) static T buffer[4096];
  for (Index offset = 0; offset < 2 * per_line; ++offset) {
    const T* p = buffer + offset;
    for (const Index n : {Index(0), Index(1), per_line - 1, per_line, per_line + 1, Index(1031), Index(2048)}) {
      CAPTURE(offset, n);
      const core::StreamSpan off = core::stream_span<A>(p, n, false);
      CHECK((off.head == 0 && off.end == 0));
      const core::StreamSpan s = core::stream_span<A>(p, n, true);
      CHECK(0 <= s.head);
      CHECK(s.head <= s.end);
      CHECK(s.end <= n);
      CHECK(s.head == std::min(n, (per_line - offset % per_line) % per_line));  // the first boundary
      CHECK((s.end - s.head) % per_line == 0);
      CHECK(n - s.end < (s.head < n ? per_line : Index(1)));  // no whole line left after end
      if (s.head < s.end) CHECK(reinterpret_cast<std::uintptr_t>(p + s.head) % std::uintptr_t(line) == 0);
    }
  }
  // an address that is not a whole number of values off a line streams nothing
  const T* odd = reinterpret_cast<const T*>(reinterpret_cast<const char*>(buffer) + 1);
  const core::StreamSpan none = core::stream_span<A>(odd, 100, true);
  CHECK((none.head == 0 && none.end == 0));
}

// for_stream_lanes: every value of the run visited once, in order; packets only from the span's head
// to the last whole packet; streamed exactly for the span's values.
TEMPLATE_TEST_CASE("for_stream_lanes: each value once, packets inside the body, streamed on the span alone",
                   "[core][fusion]", float, double, Eigen::bfloat16) {
  using T = TestType;  // bfloat16: packets narrower than a line on every ISA, so span.end < the body's end
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
  constexpr Index W = normkit::core::simd::width<A>;
  alignas(128) static T buffer[4096];
  for (Index offset = 0; offset < 2 * W + 3; ++offset) {
    for (const Index n : {Index(0), Index(1), W - 1, W, W + 1, Index(100), Index(1031)}) {
      for (const bool stream : {false, true}) {
        CAPTURE(offset, n, stream);
        const core::StreamSpan span = core::stream_span<A>(buffer + offset, n, stream);
        Index next = 0;
        bool in_order = true, packets_inside = true, streamed_right = true;
        core::for_stream_lanes<A>(n, span, [&](Index i, auto lane, auto streamed) {
          constexpr Index width = normkit::core::simd::is_scalar<decltype(lane)> ? 1 : W;
          in_order = in_order && i == next;
          next = i + width;
          if (width > 1) packets_inside = packets_inside && i >= span.head && i + W <= n;
          streamed_right = streamed_right && bool(streamed) == (width > 1 && i >= span.head && i < span.end);
        });
        CHECK(in_order);
        CHECK(next == n);
        CHECK(packets_inside);
        CHECK(streamed_right);
      }
    }
  }
}

// trails_outputs / untrailed_offset against a brute-force reading of their rule: a parameter offset
// is trailed where some output row (of up to a page's worth of rows) starts less than
// kAliasAheadBytes before it or less than kAliasTrailBytes after it, within a page; the offset
// untrailed_offset picks is trailed by no output, and it finds one wherever one exists.
TEST_CASE("untrailed_offset: parameters placed where no output row's stores hold up their loads", "[core][fusion]") {
  namespace tuning = normkit::core::tuning;
  constexpr Index page = Index(tuning::kAliasBytes);
  // per output, the page offsets where its rows start, counted over two pages for windows that wrap
  const auto starts_of = [&](const core::OutputRows& out) {
    std::vector<Index> count(std::size_t(2 * page + 1), 0);  // count[k]: row starts at offsets below k
    if (!out.base) return count;
    std::vector<bool> start(std::size_t(page), false);
    for (Index row = 0; row < page; ++row)
      start[std::size_t(
          (Index(reinterpret_cast<std::uintptr_t>(out.base) % tuning::kAliasBytes) + row * out.row_bytes) % page)] =
          true;
    for (Index k = 0; k < 2 * page; ++k)
      count[std::size_t(k + 1)] = count[std::size_t(k)] + start[std::size_t(k % page)];
    return count;
  };
  // trailed: a row starts in (offset - kAliasAheadBytes, offset + kAliasTrailBytes), within a page
  const auto trailed_by = [&](Index offset, const std::vector<Index>& count) {
    const Index lo = offset - Index(tuning::kAliasAheadBytes) + 1 + page,
                hi = offset + Index(tuning::kAliasTrailBytes) + page;
    const auto at = [&](Index k) { return count[std::size_t(k % (2 * page))] + (k >= 2 * page ? count.back() : 0); };
    return at(hi) - at(lo) > 0;
  };
  alignas(4096) static char buffer[3 * 4096];
  for (const Index row_bytes : {Index(3072), Index(4096), Index(16384), Index(1536), Index(2560), Index(1280),
                                Index(768), Index(4100), Index(64)}) {
    for (const Index y_at : {Index(0), Index(16), Index(1008), Index(4032)}) {
      for (const Index h_at : {Index(-1), y_at, (y_at + 2048) % page, Index(160)}) {
        CAPTURE(row_bytes, y_at, h_at);
        const core::OutputRows y{buffer + y_at, row_bytes}, h{h_at < 0 ? nullptr : buffer + h_at, row_bytes};
        const std::vector<Index> y_starts = starts_of(y), h_starts = starts_of(h);
        const auto trailed = [&](Index offset) { return trailed_by(offset, y_starts) || trailed_by(offset, h_starts); };
        bool any_free = false;
        for (Index offset = 0; offset < page; offset += 16) {
          any_free = any_free || !trailed(offset);
          if (offset % 208 == 0)  // a sample of offsets: the rule itself
            CHECK(core::trails_outputs(buffer + page + offset, {y, h}) == trailed(offset));
        }
        const std::intptr_t placed = core::untrailed_offset({y, h});
        CHECK((placed >= 0) == any_free);
        if (placed >= 0) {
          CHECK(placed < std::intptr_t(page));
          CHECK_FALSE(trailed(Index(placed)));
          CHECK_FALSE(core::trails_outputs(buffer + placed, {y, h}));
        }
      }
    }
  }
}

TEST_CASE("store epilogue: dx = dx_norm + dh, rounded once", "[core][fusion]") {
  for (const core::GroupShape& s : kShapes) {
    INFO("outer " << s.outer << ", groups " << s.groups << ", inner " << s.inner);
    check_add_backward<float, float>(s);
    check_add_backward<double, double>(s);
    check_add_backward<Eigen::bfloat16, float>(s);
  }
}

namespace {

// GroupNorm over N samples of C channels in G groups, HW values per channel, as the core sees it.
struct GroupNormCase {
  Index N, C, G, HW;
  bool channels_last;
  Index cpg() const { return C / G; }
  Index at(Index n, Index c, Index i) const { return channels_last ? (n * HW + i) * C + c : (n * C + c) * HW + i; }
  core::GroupShape shape() const {  // per sample when channels-last
    return channels_last ? core::GroupShape{HW, G, cpg()} : core::GroupShape{1, N * G, cpg() * HW};
  }
};

struct ChannelResult {
  IndexVector<float> y, dx, dw, db;
};

// Runs the core over every sample (channels-last: one call per sample, as per-sample shapes).
template <class Exec>
ChannelResult run_channels(const Exec& exec, const GroupNormCase& k, const IndexVector<float>& x,
                           const IndexVector<float>& dy, const IndexVector<float>& w, const IndexVector<float>& b,
                           core::StatsOrigin origin) {
  const core::GroupShape s = k.shape();
  const Index calls = k.channels_last ? k.N : 1, per_call = s.size();
  core::NormParams<float> p;
  p.affine_axis = core::AffineAxis::Channel, p.weight = w.data(), p.bias = b.data();
  p.channel_groups = k.G, p.group_channels = k.cpg();
  ChannelResult r{IndexVector<float>(x.size()), IndexVector<float>(x.size()), IndexVector<float>(k.C, 0.f),
                  IndexVector<float>(k.C, 0.f)};
  IndexVector<float> mean(s.groups), lo(s.groups), rstd(s.groups), dw(k.C), db(k.C);
  for (Index call = 0; call < calls; ++call) {
    const Index at = call * per_call;
    core::forward_groups<float>(exec, x.data() + at, r.y.data() + at, s, p,
                                core::StatsArrays<float>{mean.data(), lo.data(), rstd.data()},
                                core::StatsMode::Compute);
    core::backward_groups<float>(exec, x.data() + at, dy.data() + at, r.dx.data() + at, s, p,
                                 core::StatsArrays<const float>{mean.data(), lo.data(), rstd.data()}, origin, dw.data(),
                                 db.data());
    for (Index c = 0; c < k.C; ++c) r.dw[c] += dw[c], r.db[c] += db[c];
  }
  return r;
}

void check_channels(const GroupNormCase& k, core::StatsOrigin origin) {
  const Index total = k.N * k.C * k.HW, cpg = k.cpg(), n = cpg * k.HW;
  const IndexVector<float> x = random_values<float>(total, 11, 3.f, 2.f),
                           dy = random_values<float>(total, 12, 0.f, 1.f);
  const IndexVector<float> w = random_values<float>(k.C, 13, 1.f, 0.5f), b = random_values<float>(k.C, 14, 0.f, 1.f);
  const ChannelResult got = run_channels(core::SerialExecutor{}, k, x, dy, w, b, origin);
  IndexVector<double> dw(k.C, 0.0), db(k.C, 0.0);
  for (Index s = 0; s < k.N; ++s)
    for (Index g = 0; g < k.G; ++g) {
      const auto each = [&](auto&& f) {
        for (Index c = g * cpg; c < (g + 1) * cpg; ++c)
          for (Index i = 0; i < k.HW; ++i) f(c, k.at(s, c, i));
      };
      double mean = 0, var = 0, mg = 0, mgx = 0;
      each([&](Index, Index e) { mean += x[e]; });
      mean /= double(n);
      each([&](Index, Index e) { var += (x[e] - mean) * (x[e] - mean); });
      const double rstd = 1 / std::sqrt(var / double(n) + 1e-5);
      each([&](Index c, Index e) {
        const double xhat = (x[e] - mean) * rstd;
        mg += dy[e] * w[c] / double(n), mgx += dy[e] * w[c] * xhat / double(n);
        dw[c] += dy[e] * xhat, db[c] += dy[e];
        REQUIRE(got.y[e] == Approx(xhat * w[c] + b[c]).margin(2e-5 * (1 + std::abs(xhat * w[c] + b[c]))));
      });
      if (origin == core::StatsOrigin::Constant) mg = mgx = 0;
      each([&](Index c, Index e) {
        const double xhat = (x[e] - mean) * rstd, want = rstd * (dy[e] * w[c] - mg - xhat * mgx);
        REQUIRE(got.dx[e] == Approx(want).margin(1e-4 * (1 + std::abs(want))));
      });
    }
  for (Index c = 0; c < k.C; ++c) {
    const double scale = std::sqrt(double(k.N * k.HW));  // float sums of N * HW terms of size ~1
    REQUIRE(got.dw[c] == Approx(dw[c]).margin(1e-5 * scale * 4));
    REQUIRE(got.db[c] == Approx(db[c]).margin(1e-5 * scale * 4));
  }
  // Chunks run in reverse: the same bits (per-channel gradients are per-chunk partials).
  const ChannelResult again = run_channels(ReverseExecutor{3}, k, x, dy, w, b, origin);
  CHECK(same_bits(again.y, got.y));
  CHECK(same_bits(again.dx, got.dx));
  CHECK(same_bits(again.dw, got.dw));
  CHECK(same_bits(again.db, got.db));
}

}  // namespace

TEST_CASE("per-channel affine inside a group (GroupNorm), NCHW and channels-last", "[core][fusion][channel]") {
  for (const bool last : {false, true})
    for (const auto origin : {core::StatsOrigin::Batch, core::StatsOrigin::Constant}) {
      INFO("channels-last " << last << ", constant stats " << (origin == core::StatsOrigin::Constant));
      check_channels({2, 6, 3, 10, last}, origin);      // 2 channels per group
      check_channels({3, 8, 8, 17, last}, origin);      // one channel per group (InstanceNorm)
      check_channels({2, 12, 1, 33, last}, origin);     // one group (LayerNorm over C, H, W)
      check_channels({16, 32, 4, 1024, last}, origin);  // large enough for several chunks
    }
}
