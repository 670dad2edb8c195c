// Tests for core/row_kernels.hpp and core/col_kernels.hpp against plain double loops, for every
// length around the SIMD width (body, scalar tail, and both) and for float and double.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "normkit/core/groups.hpp"
#include "support/index_vector.hpp"

namespace core = normkit::core;
using core::Index;

namespace {

template <class T>
IndexVector<T> random_vector(Index n, unsigned seed, double offset = 0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(0, 1);
  IndexVector<T> v(n);
  for (T& e : v) e = static_cast<T>(offset + d(rng));
  return v;
}

// Relative tolerance for sums of n terms of unit size: a few ulps per term, generously.
template <class T>
double tol(Index n) {
  return 8 * std::numeric_limits<T>::epsilon() * (static_cast<double>(n) + 1);
}

}  // namespace

TEMPLATE_TEST_CASE("row kernels match a double loop for every tail length", "[core][kernels]", float, double) {
  using T = TestType;
  for (Index n = 0; n <= 5 * core::simd::width<T> + 3; ++n) {
    const auto x = random_vector<T>(n, 1, 3.0), dy = random_vector<T>(n, 2), w = random_vector<T>(n, 3),
               b = random_vector<T>(n, 4);
    const T shift = T(2.5);
    double s1 = 0, s2 = 0;
    for (Index i = 0; i < n; ++i) s1 += x[i] - double(shift), s2 += (x[i] - double(shift)) * (x[i] - double(shift));
    const core::Sums<T> s = core::run_sums(x.data(), n, shift);
    CHECK(s.s1 == Approx(s1).margin(tol<T>(n) * 4));
    CHECK(s.s2 == Approx(s2).margin(tol<T>(n) * 16));

    const core::RunNormalize<T> c{T(3), T(0.01), T(0.7), T(-0.2)};
    IndexVector<T> y(n);
    core::normalize_run(x.data(), y.data(), n, c, w.data(), b.data());
    for (Index i = 0; i < n; ++i) {  // a per-element bias replaces the scalar shift
      const double ref = ((x[i] - 3.0) - 0.01) * 0.7 * w[i] + b[i];
      CHECK(y[i] == Approx(ref).margin(tol<T>(1) * 8));
    }
    core::normalize_run(x.data(), y.data(), n, c, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), true);
    for (Index i = 0; i < n; ++i) {  // no per-element parameters: scale and shift only (streaming stores)
      const double ref = ((x[i] - 3.0) - 0.01) * 0.7 - 0.2;
      CHECK(y[i] == Approx(ref).margin(tol<T>(1) * 8));
    }

    const core::RunGrad<T> gc{T(3), T(0.01), T(0.7), T(1.3), T(0.2), T(-0.4)};
    double sg = 0, sgx = 0;
    for (Index i = 0; i < n; ++i) {
      const double xhat = ((x[i] - 3.0) - 0.01) * 0.7, g = double(dy[i]) * w[i];
      sg += g, sgx += g * xhat;
    }
    const core::Sums<T> bs = core::backward_run_sums(x.data(), dy.data(), w.data(), n, gc);
    CHECK(bs.s1 == Approx(sg).margin(tol<T>(n) * 8));
    CHECK(bs.s2 == Approx(sgx).margin(tol<T>(n) * 8));

    IndexVector<T> dx(n), dw(n, T(1)), db(n, T(2));
    core::backward_runs_dx<1>(x.data(), dy.data(), w.data(), dx.data(), n, n, &gc, dw.data(), db.data());
    for (Index i = 0; i < n; ++i) {
      const double xhat = ((x[i] - 3.0) - 0.01) * 0.7, g = double(dy[i]) * w[i];
      CHECK(dx[i] == Approx(1.3 * ((g - 0.2) + xhat * 0.4)).margin(tol<T>(1) * 16));
      CHECK(dw[i] == Approx(1 + double(dy[i]) * xhat).margin(tol<T>(1) * 8));
      CHECK(db[i] == Approx(2 + double(dy[i])).margin(tol<T>(1) * 8));
    }
    // Without w (BatchNorm, GroupNorm channels): the run's constant weight multiplies dy.
    core::RunGrad<T> gw = gc;
    gw.weight = T(1.7);
    core::backward_runs_dx<1>(x.data(), dy.data(), static_cast<const T*>(nullptr), dx.data(), n, n, &gw,
                              static_cast<T*>(nullptr), static_cast<T*>(nullptr));
    for (Index i = 0; i < n; ++i) {
      const double xhat = ((x[i] - 3.0) - 0.01) * 0.7, g = double(dy[i]) * 1.7;
      CHECK(dx[i] == Approx(1.3 * ((g - 0.2) + xhat * 0.4)).margin(tol<T>(1) * 16));
    }
  }
}

TEMPLATE_TEST_CASE("column kernels match a double loop for every panel width", "[core][kernels]", float, double) {
  using T = TestType;
  // Up to two strips of the wider of kStrip and kRowParamStrip packets, a single packet and a
  // scalar tail (col_kernels.hpp).
  constexpr Index W = core::simd::width<T>, strip = std::max(core::kStrip<T>, core::kRowParamStrip<T>);
  constexpr Index widest = 2 * strip * W + W + 3;
  const Index rows = 9, stride = widest + 5;
  for (Index cols = 1; cols <= widest; ++cols) {
    const auto x = random_vector<T>(rows * stride, 5, 1.0), dy = random_vector<T>(rows * stride, 6),
               wr = random_vector<T>(rows, 7), br = random_vector<T>(rows, 8), shift = random_vector<T>(cols, 9);
    IndexVector<T> s1(cols, T(0)), s2 = s1;
    core::cols_sums(x.data(), rows, cols, stride, shift.data(), s1.data(), s2.data());
    for (Index c = 0; c < cols; ++c) {
      double r1 = 0, r2 = 0;
      for (Index r = 0; r < rows; ++r) {
        const double d = double(x[r * stride + c]) - shift[c];
        r1 += d, r2 += d * d;
      }
      CHECK(s1[c] == Approx(r1).margin(tol<T>(rows) * 4));
      CHECK(s2[c] == Approx(r2).margin(tol<T>(rows) * 16));
    }

    // Per-column coefficients: reuse random vectors shifted to sensible ranges.
    IndexVector<T> mean(cols), lo = mean, rstd = mean, scale = mean, sh = mean, mg = mean, mgx = mean;
    for (Index c = 0; c < cols; ++c)
      mean[c] = T(1 + 0.1 * double(c)), lo[c] = T(1e-3), rstd[c] = T(0.5 + 0.01 * double(c)),
      scale[c] = T(1.5 - 0.01 * double(c)), sh[c] = T(0.1 * double(c)), mg[c] = T(0.05), mgx[c] = T(-0.02 * double(c));
    IndexVector<T> y(x.size(), T(-7));
    core::normalize_cols(x.data(), y.data(), rows, cols, stride,
                         core::ColsNormalize<T>{mean.data(), lo.data(), scale.data(), sh.data()}, wr.data(), br.data());
    for (Index r = 0; r < rows; ++r) {
      for (Index c = 0; c < cols; ++c) {
        const double ref = ((x[r * stride + c] - double(mean[c])) - lo[c]) * scale[c] * wr[r] + sh[c] + br[r];
        CHECK(y[r * stride + c] == Approx(ref).margin(tol<T>(1) * 16));
      }
      for (Index c = cols; c < stride; ++c) CHECK(y[r * stride + c] == T(-7));  // outside the panel: untouched
    }

    IndexVector<T> neg_mg(mg.size()), neg_mgx(mgx.size());  // ColsGrad takes the mean terms negated
    for (Index c = 0; c < mg.size(); ++c) neg_mg[c] = -mg[c], neg_mgx[c] = -mgx[c];
    const auto weight_c = random_vector<T>(cols, 10);
    // g = dy * w[r] (ColMajor LayerNorm), dy (BatchNorm channels-last: its own kernel, the
    // coefficients folded per column) or dy * weight[c] (GroupNorm channels-last).
    for (const std::string g_form : {"dy * w[r]", "dy", "dy * weight[c]"}) {
      INFO("g = " << g_form << ", " << cols << " columns");
      const bool row_weights = g_form == "dy * w[r]", col_weights = g_form == "dy * weight[c]";
      core::ColsGrad<T> k{mean.data(), lo.data(), rstd.data(), scale.data(), neg_mg.data(), neg_mgx.data()};
      if (col_weights) k.weight = weight_c.data();
      const T* w = row_weights ? wr.data() : nullptr;
      IndexVector<T> sg(cols, T(0)), sgt = sg;
      core::backward_cols_sums(x.data(), dy.data(), rows, cols, stride, k, w, sg.data(), sgt.data());
      IndexVector<T> dx(x.size(), T(-7)), dw(rows, T(0)), db = dw;
      core::backward_cols_dx(x.data(), dy.data(), dx.data(), rows, cols, stride, k, w, dw.data(), db.data());
      for (Index c = 0; c < cols; ++c) {
        double rg = 0, rgt = 0;  // the sums are of g and of g * t (the caller multiplies by rstd)
        for (Index r = 0; r < rows; ++r) {
          const double t = (x[r * stride + c] - double(mean[c])) - lo[c], xhat = t * rstd[c],
                       d = double(dy[r * stride + c]), g = row_weights ? d * wr[r] : d;
          rg += g, rgt += g * t;
          const double gc = col_weights ? d * weight_c[c] : g;  // the sums take no column weight
          CHECK(dx[r * stride + c] == Approx(scale[c] * ((gc - mg[c]) - xhat * mgx[c])).margin(tol<T>(1) * 32));
        }
        CHECK(sg[c] == Approx(rg).margin(tol<T>(rows) * 8));
        CHECK(sgt[c] == Approx(rgt).margin(tol<T>(rows) * 8));
      }
      for (Index r = 0; r < rows; ++r) {
        for (Index c = cols; c < stride; ++c) CHECK(dx[r * stride + c] == T(-7));  // outside the panel: untouched
        double rw = 0, rb = 0;
        for (Index c = 0; row_weights && c < cols; ++c) {
          const double xhat = ((x[r * stride + c] - double(mean[c])) - lo[c]) * rstd[c];
          rw += dy[r * stride + c] * xhat, rb += dy[r * stride + c];
        }
        CHECK(dw[r] == Approx(rw).margin(tol<T>(cols) * 8));  // without w: nothing accumulated
        CHECK(db[r] == Approx(rb).margin(tol<T>(cols) * 8));
      }
    }
  }
}

// One geometry of the test below.
template <class T>
void check_column_walks(Index rows, Index cols, Index stride) {
  const auto x = random_vector<T>(rows * stride, 11, 2.0), dy = random_vector<T>(rows * stride, 12),
             wr = random_vector<T>(rows, 13), br = random_vector<T>(rows, 14), a = random_vector<T>(cols, 15),
             b = random_vector<T>(cols, 16), c = random_vector<T>(cols, 17);
  const auto same = [](const IndexVector<T>& u, const IndexVector<T>& v) {
    return std::memcmp(u.data(), v.data(), sizeof(T) * static_cast<std::size_t>(u.size())) == 0;
  };
  IndexVector<T> s1(cols, T(0)), s2 = s1, r1 = s1, r2 = s1;
  core::cols_sums(x.data(), rows, cols, stride, a.data(), s1.data(), s2.data(), rows);
  for (Index r = 0; r < rows; ++r)
    core::cols_sums(x.data() + r * stride, 1, cols, stride, a.data(), r1.data(), r2.data());
  CHECK(same(s1, r1));
  CHECK(same(s2, r2));

  const core::ColsNormalize<T> kn{a.data(), b.data(), c.data(), b.data()};
  IndexVector<T> y(x.size(), T(0)), yr = y;
  core::normalize_cols(x.data(), y.data(), rows, cols, stride, kn, wr.data(), br.data(), false, rows);
  for (Index r = 0; r < rows; ++r)
    core::normalize_cols(x.data() + r * stride, yr.data() + r * stride, 1, cols, stride, kn, wr.data() + r,
                         br.data() + r);
  CHECK(same(y, yr));

  const core::ColsGrad<T> kg{a.data(), b.data(), c.data(), a.data(), b.data(), c.data()};
  IndexVector<T> sg(cols, T(0)), sgx = sg, rg = sg, rgx = sg;
  core::backward_cols_sums(x.data(), dy.data(), rows, cols, stride, kg, wr.data(), sg.data(), sgx.data(), rows);
  for (Index r = 0; r < rows; ++r)
    core::backward_cols_sums(x.data() + r * stride, dy.data() + r * stride, 1, cols, stride, kg, wr.data() + r,
                             rg.data(), rgx.data());
  CHECK(same(sg, rg));
  CHECK(same(sgx, rgx));
  IndexVector<T> dx(x.size(), T(0)), dxr = dx, dw(rows, T(0)), db = dw, dwr = dw, dbr = dw;
  core::backward_cols_dx(x.data(), dy.data(), dx.data(), rows, cols, stride, kg, wr.data(), dw.data(), db.data(), false,
                         rows);
  for (Index r = 0; r < rows; ++r)
    core::backward_cols_dx(x.data() + r * stride, dy.data() + r * stride, dxr.data() + r * stride, 1, cols, stride, kg,
                           wr.data() + r, dwr.data() + r, dbr.data() + r);
  CHECK(same(dx, dxr));
  CHECK(same(dw, dwr));
  CHECK(same(db, dbr));
  // Without per-row weights (channels-last layers), with a per-column weight.
  core::ColsGrad<T> kc = kg;
  kc.weight = b.data();
  const T* none = nullptr;
  IndexVector<T> cg(cols, T(0)), cgx = cg, crg = cg, crgx = cg, cdx(x.size(), T(0)), cdxr = cdx;
  core::backward_cols_sums(x.data(), dy.data(), rows, cols, stride, kc, none, cg.data(), cgx.data(), rows);
  core::backward_cols_dx(x.data(), dy.data(), cdx.data(), rows, cols, stride, kc, none, dw.data(), db.data(), false,
                         rows);
  for (Index r = 0; r < rows; ++r) {
    core::backward_cols_sums(x.data() + r * stride, dy.data() + r * stride, 1, cols, stride, kc, none, crg.data(),
                             crgx.data());
    core::backward_cols_dx(x.data() + r * stride, dy.data() + r * stride, cdxr.data() + r * stride, 1, cols, stride, kc,
                           none, dwr.data() + r, dbr.data() + r);
  }
  CHECK(same(cg, crg));
  CHECK(same(cgx, crgx));
  CHECK(same(cdx, cdxr));
}

TEMPLATE_TEST_CASE("column kernels give the bits of a row-at-a-time walk across row blocks", "[core][kernels]", float,
                   double) {
  // for_strips walks a panel in blocks of rows (tuning.hpp: kStripBlockBytes), every strip of a
  // block before the next: each column must still meet its rows in order, and each row its strips
  // in order (dweight, dbias), so the bits equal one call per row.
  // The whole walks may prefetch (fetch_rows = rows), the row-at-a-time ones cannot: prefetching
  // must change no bit.
  using T = TestType;
  constexpr Index W = core::simd::width<T>, strip = std::max(core::kStrip<T>, core::kRowParamStrip<T>);
  constexpr Index cols = 2 * strip * W + W + 3;
  // Rows 4 KiB apart (and a few values more, so that rows start at every alignment) are walked in
  // blocks whatever the ISA's strip width; rows a few values wider than the panel, more of them than
  // any ISA prefetches ahead (tuning.hpp: kStripPrefetchBytes), are walked whole, prefetching.
  for (const auto& [rows, stride] : {std::pair<Index, Index>{37, 4096 / Index(sizeof(T)) + 3}, {600, cols + 5}}) {
    constexpr Index wide = core::kRowParamStrip<T>;  // the kernels with per-row parameters
    if (rows == 37) {                                // several blocks
      REQUIRE(core::strip_block_rows<T, T>(rows, cols, stride, 3) < rows);
      REQUIRE(core::strip_block_rows<T, T, wide>(rows, cols, stride, 3) < rows);
    } else {
      REQUIRE(core::StripPrefetch<T, T>(stride, rows).any());
      REQUIRE(core::StripPrefetch<T, T, wide>(stride, rows).any());
    }
    check_column_walks<T>(rows, cols, stride);
  }
}

TEMPLATE_TEST_CASE("four runs per sweep give the bits of four single-run sweeps", "[core][kernels]", float, double) {
  // normalize_runs<4> and backward_runs_dx<4> share w, b and the dweight/dbias accumulators among
  // four runs; each element must still see the runs in order, so the bits equal run-by-run calls.
  using T = TestType;
  constexpr Index W = core::simd::width<T>;
  for (const Index n : {Index(1), W - 1, W, 3 * W + 5, Index(97)}) {
    for (const Index offset : {Index(0), Index(3)}) {  // an unaligned start for every run
      INFO("n " << n << ", offset " << offset);
      const Index stride = n + 2, size = offset + 4 * stride;
      const auto x = random_vector<T>(size, 5, 1.0), dy = random_vector<T>(size, 6), w = random_vector<T>(n, 7),
                 b = random_vector<T>(n, 8);
      core::RunNormalize<T> nc[4];
      core::RunGrad<T> gc[4];
      for (int r = 0; r < 4; ++r) {
        nc[r] = {T(0.9) + T(r) / 8, T(1e-8) * T(r), T(1.1) + T(r), T(0.25) * T(r)};
        gc[r] = {T(0.9) + T(r) / 8, T(1e-8) * T(r), T(1.3) - T(r) / 16, T(0.7) + T(r), T(0.1) * T(r), T(-0.2) * T(r)};
      }
      for (const bool with_w : {false, true}) {
        const T* wp = with_w ? w.data() : nullptr;
        IndexVector<T> y4(size, T(0)), y1 = y4, dx4 = y4, dx1 = y4;
        IndexVector<T> dw4(n, T(0.5)), db4(n, T(-0.5)), dw1 = dw4, db1 = db4;
        const T* xs = x.data() + offset;
        core::normalize_runs<4>(xs, y4.data() + offset, n, stride, nc, wp, with_w ? b.data() : nullptr);
        core::backward_runs_dx<4>(xs, dy.data() + offset, wp, dx4.data() + offset, n, stride, gc, dw4.data(),
                                  db4.data());
        for (Index r = 0; r < 4; ++r) {
          const Index at = offset + r * stride;
          core::normalize_run(x.data() + at, y1.data() + at, n, nc[r], wp, with_w ? b.data() : nullptr);
          core::backward_runs_dx<1>(x.data() + at, dy.data() + at, wp, dx1.data() + at, n, n, &gc[r], dw1.data(),
                                    db1.data());
        }
        REQUIRE(std::memcmp(y4.data(), y1.data(), sizeof(T) * static_cast<std::size_t>(y4.size())) == 0);
        REQUIRE(std::memcmp(dx4.data(), dx1.data(), sizeof(T) * static_cast<std::size_t>(dx4.size())) == 0);
        REQUIRE(std::memcmp(dw4.data(), dw1.data(), sizeof(T) * static_cast<std::size_t>(dw4.size())) == 0);
        REQUIRE(std::memcmp(db4.data(), db1.data(), sizeof(T) * static_cast<std::size_t>(db4.size())) == 0);
      }
    }
  }
}
