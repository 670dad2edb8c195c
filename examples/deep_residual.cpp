// deep_residual — why DeepNorm: a stack of L residual blocks trained as Post-LN, Pre-LN and DeepNorm.
//
// Model (train_mlp's spiral classifier, mlp.hpp, made deep):
//   x (B x 2) -> Linear(2, D) -> L residual blocks -> Linear(D, 4) -> softmax cross-entropy
//   branch F(u) = Linear(F, D)(ReLU(Linear(D, F)(u)))                       D = 32, F = 64
//   Post-LN   x_{l+1} = LN(x_l + F(x_l))              ln.forward_add(x, f, h, y)
//   Pre-LN    x_{l+1} = x_l + F(LN(x_l)), final LN      the running sum h_l = h_{l-1} + f_{l-1} is
//             fused into the next LN: ln.forward_add(h_prev, f_prev, h, y); backward_add gets the
//             gradient that reaches h_l along the residual stream as dh
//   DeepNorm  x_{l+1} = LN(alpha x_l + F(x_l))         ln.forward_add(f, x, h, y, alpha); the branch
//             weights are Xavier-initialized with gain beta (the others: gain 1)
// alpha and beta come from normkit/deepnorm.hpp. The paper counts layers of two sub-layers each
// (attention + FFN, alpha = (2N)^(1/4) for 2N sub-layers); a block here is one sub-layer, so L
// blocks are N = L/2 layers: deepnorm_encoder_only(L / 2), alpha = L^(1/4), beta = (4L)^(-1/4).
//
// Training: Adam (lr 1e-3, betas 0.9/0.999, no warm-up, no clipping), batch 40, 2000 points, every
// variant from the same seeds. Printed per variant: the mean training loss of a few epochs, the test
// accuracy, and the gradient norm of the first block's branch weights (and of the last block's) at
// the first step and averaged over the run.
//
// Usage: deep_residual [--layers=6,64] [--epochs=6]
// Exit status 1 if a shallow (L = 6) run does not train (last-epoch loss above 0.8 x the first), or if
// any loss of a Pre-LN or DeepNorm run is not finite. Post-LN is allowed to fail: that is the point.
// Eigen's matrix products (the branches' Linear layers) trip GCC 12's false -W(maybe-)uninitialized
// inside avx512fintrin.h (GCC bug 105593), as in bench/bench_eigen.cpp: silenced for this file only.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include "mlp.hpp"

#include <normkit/deepnorm.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace mlp;

constexpr int kDim = 32;
constexpr int kFF = 64;
constexpr float kAdamLr = 1e-3f;

enum class Variant { PostLN, PreLN, DeepNorm };
const char* variant_name(Variant v) {
  return v == Variant::PostLN ? "Post-LN" : v == Variant::PreLN ? "Pre-LN" : "DeepNorm";
}

// Adam over one parameter array (moments kept beside it).
struct AdamSlot {
  std::vector<float> m, v;
  void step(float* p, const float* g, Index n, int t) {
    if (m.empty()) m.assign(static_cast<std::size_t>(n), 0.f), v.assign(static_cast<std::size_t>(n), 0.f);
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    const float c1 = 1.f - std::pow(b1, static_cast<float>(t)), c2 = 1.f - std::pow(b2, static_cast<float>(t));
    for (Index i = 0; i < n; ++i) {
      const std::size_t k = static_cast<std::size_t>(i);
      m[k] = b1 * m[k] + (1 - b1) * g[i];
      v[k] = b2 * v[k] + (1 - b2) * g[i] * g[i];
      p[i] -= kAdamLr * (m[k] / c1) / (std::sqrt(v[k] / c2) + eps);
    }
  }
};

// y = x W + b (W: in x out) with Eigen's products; Xavier-uniform init of gain `gain`.
struct Dense {
  Mat W, dW;
  RowVec b, db;
  AdamSlot aw, ab;
  Dense(int in, int out, float gain, Rng& rng) : W(in, out), dW(in, out), b(RowVec::Zero(out)), db(RowVec::Zero(out)) {
    const float bound = gain * std::sqrt(6.0f / static_cast<float>(in + out));
    for (Index i = 0; i < W.size(); ++i) W.data()[i] = bound * (2.0f * rng.uniform() - 1.0f);
  }
  Mat forward(const Mat& x) const {
    Mat y = x * W;
    y.rowwise() += b;
    return y;
  }
  Mat backward(const Mat& x, const Mat& dy) {
    dW.noalias() = x.transpose() * dy;
    db = dy.colwise().sum();
    return dy * W.transpose();
  }
  void adam(int t) {
    aw.step(W.data(), dW.data(), W.size(), t);
    ab.step(b.data(), db.data(), b.size(), t);
  }
};

struct Norm {
  normkit::LayerNorm<float> ln{kDim};
  normkit::NormStats<float> stats;
  normkit::NormGrads<float> grads;
  AdamSlot aw, ab;
  void adam(int t) {
    aw.step(ln.weight().data(), grads.weight.data(), ln.weight().size(), t);
    ab.step(ln.bias().data(), grads.bias.data(), ln.bias().size(), t);
  }
};

struct Block {
  Dense fc1, fc2;
  Norm norm;
  Mat in, a, r, f;  // branch input, fc1 output, ReLU output, branch output
  Mat h, y;         // the norm's input (the residual sum) and output
  Block(float gain, Rng& rng) : fc1(kDim, kFF, gain, rng), fc2(kFF, kDim, gain, rng) {}
  void branch_forward(const Mat& u) {
    in = u;
    a = fc1.forward(in);
    r = relu(a);
    f = fc2.forward(r);
  }
  Mat branch_backward(const Mat& df) { return fc1.backward(in, relu_backward(a, fc2.backward(r, df))); }
  double grad_norm() const { return std::sqrt(double(fc1.dW.squaredNorm()) + double(fc2.dW.squaredNorm())); }
};

struct Model {
  Variant variant;
  double alpha = 1;
  Dense embed, head;
  std::vector<Block> blocks;
  Norm final_norm;  // Pre-LN only
  Mat x0, hf, yf;   // embedding output; Pre-LN's final sum and its norm

  Model(Variant v, int layers, Rng& rng) : variant(v), embed(2, kDim, 1.f, rng), head(kDim, kClasses, 1.f, rng) {
    float gain = 1.f;
    if (v == Variant::DeepNorm) {
      const normkit::DeepNormScale s = normkit::deepnorm_encoder_only(std::max(1, layers / 2));
      alpha = s.alpha;
      gain = static_cast<float>(s.beta);
    }
    blocks.reserve(static_cast<std::size_t>(layers));
    for (int l = 0; l < layers; ++l) blocks.emplace_back(gain, rng);
  }

  Mat forward(const Mat& input) {
    x0 = embed.forward(input);
    const Index B = x0.rows();
    if (variant == Variant::PreLN) {
      for (std::size_t l = 0; l < blocks.size(); ++l) {
        Block& b = blocks[l];
        b.h.resize(B, kDim), b.y.resize(B, kDim);
        if (l == 0) {
          b.h = x0;
          b.norm.stats = b.norm.ln.forward(as_tensor(b.h), as_tensor(b.y));
        } else {  // h_l = h_{l-1} + f_{l-1}, y_l = LN(h_l), one call
          b.norm.stats = b.norm.ln.forward_add(as_tensor(blocks[l - 1].h), as_tensor(blocks[l - 1].f), as_tensor(b.h),
                                               as_tensor(b.y));
        }
        b.branch_forward(b.y);
      }
      hf.resize(B, kDim), yf.resize(B, kDim);
      final_norm.stats = final_norm.ln.forward_add(as_tensor(blocks.back().h), as_tensor(blocks.back().f),
                                                   as_tensor(hf), as_tensor(yf));
      return head.forward(yf);
    }
    const Mat* x = &x0;
    for (Block& b : blocks) {
      b.branch_forward(*x);
      b.h.resize(B, kDim), b.y.resize(B, kDim);
      if (variant == Variant::PostLN)  // h = x + f
        b.norm.stats = b.norm.ln.forward_add(as_tensor(*x), as_tensor(b.f), as_tensor(b.h), as_tensor(b.y));
      else  // h = f + alpha x
        b.norm.stats = b.norm.ln.forward_add(as_tensor(b.f), as_tensor(*x), as_tensor(b.h), as_tensor(b.y), alpha);
      x = &b.y;
    }
    return head.forward(*x);
  }

  void backward(const Mat& dlogits) {
    const Mat& top = variant == Variant::PreLN ? yf : blocks.back().y;
    Mat dy = head.backward(top, dlogits);
    const Mat none(0, 0);
    Mat dh(dy.rows(), kDim);
    if (variant == Variant::PreLN) {
      // dh: the gradient of the residual stream h_{l+1} = h_l + f_l, which is also f_l's gradient.
      final_norm.grads = final_norm.ln.backward_add(as_tensor(hf), as_tensor(dy), as_tensor(none), final_norm.stats,
                                                    as_tensor(dh));
      for (std::size_t l = blocks.size(); l-- > 0;) {
        Block& b = blocks[l];
        const Mat dy_norm = b.branch_backward(dh);
        Mat dh_prev(dy.rows(), kDim);
        b.norm.grads = b.norm.ln.backward_add(as_tensor(b.h), as_tensor(dy_norm), as_tensor(dh), b.norm.stats,
                                              as_tensor(dh_prev));
        dh.swap(dh_prev);
      }
    } else {
      for (std::size_t l = blocks.size(); l-- > 0;) {
        Block& b = blocks[l];
        b.norm.grads = b.norm.ln.backward_add(as_tensor(b.h), as_tensor(dy), as_tensor(none), b.norm.stats,
                                              as_tensor(dh));
        // h = x + f (Post-LN) or f + alpha x (DeepNorm): f gets dh, x gets alpha dh plus the branch's.
        dy = b.branch_backward(dh);
        dy += static_cast<float>(alpha) * dh;
      }
    }
    embed.backward(x0, variant == Variant::PreLN ? dh : dy);
  }

  void adam(int t) {
    embed.adam(t), head.adam(t);
    for (Block& b : blocks) b.fc1.adam(t), b.fc2.adam(t), b.norm.adam(t);
    if (variant == Variant::PreLN) final_norm.adam(t);
  }
};

struct Result {
  std::vector<double> epoch_loss;
  double test_acc = 0, grad_first0 = 0, grad_last0 = 0, grad_first_mean = 0, grad_last_mean = 0, seconds = 0;
  bool finite = true;
};

Result run(Variant v, int layers, int epochs, const Dataset& train, const Dataset& test) {
  const auto t0 = std::chrono::steady_clock::now();
  Rng rng(7);  // the same initial draws for every variant (DeepNorm scales its branch draws by beta)
  Model model(v, layers, rng);
  Rng order_rng(3);
  std::vector<Index> order(train.y.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<Index>(i);
  Result res;
  int step = 0;
  Mat xb(kBatch, 2), dlogits;
  std::vector<int> yb(kBatch);
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    for (std::size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[order_rng.engine() % (i + 1)]);
    double loss_sum = 0;
    int correct = 0, batches = 0;
    for (std::size_t start = 0; start + kBatch <= order.size(); start += kBatch) {
      for (Index r = 0; r < kBatch; ++r) {
        const Index sample = order[start + static_cast<std::size_t>(r)];
        xb.row(r) = train.x.row(sample);
        yb[static_cast<std::size_t>(r)] = train.y[static_cast<std::size_t>(sample)];
      }
      const double loss = softmax_cross_entropy(model.forward(xb), yb, dlogits, correct) / kBatch;
      if (!std::isfinite(loss)) res.finite = false;
      loss_sum += loss, ++batches;
      model.backward(dlogits);
      const double g_first = model.blocks.front().grad_norm(), g_last = model.blocks.back().grad_norm();
      if (step == 0) res.grad_first0 = g_first, res.grad_last0 = g_last;
      res.grad_first_mean += g_first, res.grad_last_mean += g_last;
      model.adam(++step);
    }
    res.epoch_loss.push_back(loss_sum / batches);
  }
  res.grad_first_mean /= step, res.grad_last_mean /= step;
  Mat d;
  int correct = 0;
  softmax_cross_entropy(model.forward(test.x), test.y, d, correct);
  res.test_acc = static_cast<double>(correct) / static_cast<double>(test.y.size());
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::atoi(item.c_str()));
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> layer_counts = {6, 64};
  int epochs = 6;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--layers=", 0) == 0) {
      layer_counts = parse_list(arg.substr(9));
    } else if (arg.rfind("--epochs=", 0) == 0) {
      epochs = std::atoi(arg.c_str() + 9);
    } else {
      std::fprintf(stderr, "usage: %s [--layers=6,64] [--epochs=6]\n", argv[0]);
      return 2;
    }
  }
  for (int l : layer_counts)
    if (l < 2 || epochs < 1) {
      std::fprintf(stderr, "deep_residual: layers must be >= 2 and epochs >= 1\n");
      return 2;
    }
  try {
    const Dataset train = make_spirals(500, 1), test = make_spirals(250, 2);
    std::printf("deep_residual: %zu train / %zu test spiral points, D = %d, F = %d, batch %d, Adam lr %g, %d epochs\n",
                train.y.size(), test.y.size(), kDim, kFF, kBatch, static_cast<double>(kAdamLr), epochs);
    bool ok = true;
    for (int layers : layer_counts) {
      const normkit::DeepNormScale s = normkit::deepnorm_encoder_only(std::max(1, layers / 2));
      std::printf("\n== L = %d blocks (DeepNorm: alpha %.3f, beta %.3f) ==\n", layers, s.alpha, s.beta);
      std::printf("%-9s  train loss by epoch", "variant");
      for (int e = 1; e < epochs; ++e) std::printf("        ");
      std::printf("  test acc  |grad W| block 1 (step 1, mean)  block L (step 1, mean)   time\n");
      for (Variant v : {Variant::PostLN, Variant::PreLN, Variant::DeepNorm}) {
        const Result r = run(v, layers, epochs, train, test);
        std::printf("%-9s ", variant_name(v));
        for (double l : r.epoch_loss) std::printf(" %7.4f", l);
        std::printf("   %6.1f%%   %9.3g  %9.3g            %9.3g  %9.3g  %5.1fs\n", 100 * r.test_acc, r.grad_first0,
                    r.grad_first_mean, r.grad_last0, r.grad_last_mean, r.seconds);
        const bool trained = r.epoch_loss.back() < 0.8 * r.epoch_loss.front();
        if (v != Variant::PostLN && !r.finite) ok = false;
        if (layers <= 6 && !trained) ok = false;
      }
    }
    std::printf("\ndeep_residual: %s\n",
                ok ? "ok" : "FAILED (a shallow run did not train, or a Pre-LN/DeepNorm loss was not finite)");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deep_residual: unexpected exception: %s\n", e.what());
    return 1;
  }
}
