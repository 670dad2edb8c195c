// examples/mlp.hpp — the pieces of train_mlp's classifier, shared by train_mlp.cpp (one process)
// and train_mlp_mpi.cpp (data-parallel over MPI ranks with SyncBatchNorm).
//
//   x (B x 2) -> Linear(2, 64)  -> Norm(64) -> ReLU
//             -> Linear(64, 64) -> Norm(64) -> ReLU
//             -> Linear(64, 4)  -> softmax cross-entropy (normkit::CrossEntropyLoss)
//
// Data: four interleaved spiral arms in the plane, one class per arm, generated from a fixed seed.
// Everything except the norms is written out below as plain loops over Eigen matrices (row-major,
// one sample per row), so each piece's math is on the page. The norms are normkit's, forward AND
// backward: the matrices are handed to them as TensorMaps (no copy), and their weight()/bias() are
// updated by SGD from the NormGrads that backward returns.
#pragma once

#include <normkit/normkit.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

namespace mlp {

using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;  // rows = samples
using RowVec = Eigen::RowVectorXf;
using Index = Eigen::Index;

constexpr int kClasses = 4;
constexpr int kHidden = 64;
constexpr int kEpochs = 20;
constexpr int kBatch = 40;
constexpr float kLearningRate = 0.1f;

// ----------------------------------------------------------------------------------------------
// Random numbers: std::mt19937 is the same everywhere; the uniform/normal maps are written out
// (the std:: distributions may differ between standard libraries).
struct Rng {
  std::mt19937 engine;
  explicit Rng(std::uint32_t seed) : engine(seed) {}
  float uniform() { return static_cast<float>(engine() >> 8) * (1.0f / 16777216.0f); }  // [0, 1)
  float normal() {                                                                      // Box-Muller
    const float u1 = 1.0f - uniform(), u2 = uniform();
    return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.2831853f * u2);
  }
};

// ----------------------------------------------------------------------------------------------
// Data: class k is the arm  r = t,  angle = k * 2pi/K + 4t + noise,  t in [0, 1).
struct Dataset {
  Mat x;               // n x 2
  std::vector<int> y;  // n labels in [0, kClasses)
};

inline Dataset make_spirals(int per_class, std::uint32_t seed) {
  Rng rng(seed);
  Dataset d{Mat(per_class * kClasses, 2), std::vector<int>(static_cast<std::size_t>(per_class * kClasses))};
  for (int k = 0; k < kClasses; ++k) {
    for (int i = 0; i < per_class; ++i) {
      const int n = k * per_class + i;
      const float t = (static_cast<float>(i) + rng.uniform()) / static_cast<float>(per_class);
      const float angle = static_cast<float>(k) * 6.2831853f / kClasses + 4.0f * t + 0.2f * rng.normal();
      d.x(n, 0) = t * std::cos(angle);
      d.x(n, 1) = t * std::sin(angle);
      d.y[static_cast<std::size_t>(n)] = k;
    }
  }
  return d;
}

// ----------------------------------------------------------------------------------------------
// Linear: y = x W^T + b.   W is out x in, b is 1 x out.
//   backward: dW = dy^T x,  db = sum over rows of dy,  dx = dy W.
// The products are written as loops, as in llm.c: at these sizes they cost nothing, and the index
// arithmetic is the documentation. (Before a BatchNorm the bias b is cancelled by the mean
// subtraction, so its gradient is ~0; before a LayerNorm it is not. Kept in both for simplicity.)
struct Linear {
  Mat W, dW;
  RowVec b, db;

  Linear(int in, int out, Rng& rng) : W(out, in), dW(out, in), b(RowVec::Zero(out)), db(RowVec::Zero(out)) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(in));  // PyTorch's default init range
    for (Index i = 0; i < W.size(); ++i) W.data()[i] = bound * (2.0f * rng.uniform() - 1.0f);
  }
  Mat forward(const Mat& x) const {
    Mat y(x.rows(), W.rows());
    for (Index r = 0; r < x.rows(); ++r)
      for (Index o = 0; o < W.rows(); ++o) {
        float sum = b(o);
        for (Index i = 0; i < W.cols(); ++i) sum += x(r, i) * W(o, i);
        y(r, o) = sum;
      }
    return y;
  }
  Mat backward(const Mat& x, const Mat& dy) {
    Mat dx = Mat::Zero(x.rows(), x.cols());
    dW.setZero();
    db.setZero();
    for (Index r = 0; r < x.rows(); ++r)
      for (Index o = 0; o < W.rows(); ++o) {
        const float g = dy(r, o);
        db(o) += g;
        for (Index i = 0; i < W.cols(); ++i) {
          dW(o, i) += g * x(r, i);
          dx(r, i) += g * W(o, i);
        }
      }
    return dx;
  }
  void sgd(float lr) {
    W -= lr * dW;
    b -= lr * db;
  }
};

// ReLU: y = max(x, 0);  dx = dy where x > 0, else 0.
inline Mat relu(const Mat& x) {
  Mat y(x.rows(), x.cols());
  for (Index i = 0; i < x.size(); ++i) y.data()[i] = x.data()[i] > 0.0f ? x.data()[i] : 0.0f;
  return y;
}
inline Mat relu_backward(const Mat& x, const Mat& dy) {
  Mat dx(x.rows(), x.cols());
  for (Index i = 0; i < x.size(); ++i) dx.data()[i] = x.data()[i] > 0.0f ? dy.data()[i] : 0.0f;
  return dx;
}

// Softmax cross-entropy by normkit::CrossEntropyLoss, averaged over the batch of `batch` rows (these
// rows, unless they are one process's share of a larger batch).
//   p = softmax(logits row),  loss = -mean log p[label],  dlogits = (p - onehot(label)) / batch.
// Reduction::None gives each row's loss; backward with dloss = 1 / batch per row gives dlogits of
// the mean over the whole batch. Returns the summed loss (not the mean, so that epochs can average
// over samples); counts hits.
inline double softmax_cross_entropy(const Mat& logits, const std::vector<int>& labels, Mat& dlogits, int& correct,
                                    Index batch = -1) {
  const Index B = logits.rows(), K = logits.cols(), divisor = batch < 0 ? B : batch;
  dlogits.resize(B, K);
  const Eigen::TensorMap<const Eigen::Tensor<float, 2, Eigen::RowMajor>> x(logits.data(), B, K);
  Eigen::TensorMap<Eigen::Tensor<float, 2, Eigen::RowMajor>> dx(dlogits.data(), B, K);
  Eigen::Tensor<std::int64_t, 1> target(B);
  for (Index r = 0; r < B; ++r) target(r) = labels[static_cast<std::size_t>(r)];
  const normkit::CrossEntropyLoss<float> ce({-100, 0.0, normkit::Reduction::None});
  const Eigen::Tensor<float, 1> loss = ce.forward(x, target);
  Eigen::Tensor<float, 1> dloss(B);
  dloss.setConstant(1.0f / static_cast<float>(divisor));
  ce.backward(x, target, dloss, dx);
  double loss_sum = 0.0;
  for (Index r = 0; r < B; ++r) {
    loss_sum += static_cast<double>(loss(r));
    Index argmax = 0;
    for (Index k = 1; k < K; ++k)
      if (logits(r, k) > logits(r, argmax)) argmax = k;
    correct += (argmax == labels[static_cast<std::size_t>(r)]);
  }
  return loss_sum;
}

// ----------------------------------------------------------------------------------------------
// A normkit norm over the features of a (B x F) row-major matrix. The matrices are viewed as rank-2
// RowMajor tensors in place; forward saves NormStats for backward, backward returns NormGrads.
inline Eigen::TensorMap<const Eigen::Tensor<float, 2, Eigen::RowMajor>> as_tensor(const Mat& m) {
  return {m.data(), m.rows(), m.cols()};
}
inline Eigen::TensorMap<Eigen::Tensor<float, 2, Eigen::RowMajor>> as_tensor(Mat& m) {
  return {m.data(), m.rows(), m.cols()};
}

template <class Norm>
struct NormLayer {
  Norm norm;
  normkit::NormStats<float> stats;  // saved by forward for backward
  normkit::NormGrads<float> grads;  // dweight, dbias from backward

  template <class... Args>  // SyncBatchNorm also takes its communicator
  explicit NormLayer(int features, Args... args) : norm(features, args...) {}
  Mat forward(const Mat& x) {
    Mat y(x.rows(), x.cols());
    stats = norm.forward(as_tensor(x), as_tensor(y));
    return y;
  }
  Mat backward(const Mat& x, const Mat& dy) {
    Mat dx(x.rows(), x.cols());
    grads = norm.backward(as_tensor(x), as_tensor(dy), stats, as_tensor(dx));
    return dx;
  }
  void sgd(float lr) {
    norm.weight() = norm.weight() - grads.weight * lr;
    norm.bias() = norm.bias() - grads.bias * lr;
  }
  void train(bool on) {
    if constexpr (!std::is_same_v<Norm, normkit::LayerNorm<float>>) norm.train(on);  // LayerNorm has no modes
    (void)on;
  }
};

// ----------------------------------------------------------------------------------------------
// The model. forward keeps every activation that backward needs.
template <class Norm>
struct MLP {
  Linear fc1, fc2, fc3;
  NormLayer<Norm> norm1, norm2;
  Mat x, h1, a1, r1, h2, a2, r2;  // input, linear out, norm out, relu out (per hidden layer)

  template <class... NormArgs>
  explicit MLP(Rng& rng, NormArgs... args)
      : fc1(2, kHidden, rng), fc2(kHidden, kHidden, rng), fc3(kHidden, kClasses, rng), norm1(kHidden, args...),
        norm2(kHidden, args...) {}

  Mat forward(const Mat& input) {
    x = input;
    h1 = fc1.forward(x);
    a1 = norm1.forward(h1);
    r1 = relu(a1);
    h2 = fc2.forward(r1);
    a2 = norm2.forward(h2);
    r2 = relu(a2);
    return fc3.forward(r2);  // logits
  }
  void backward(const Mat& dlogits) {
    const Mat dr2 = fc3.backward(r2, dlogits);
    const Mat dh2 = norm2.backward(h2, relu_backward(a2, dr2));
    const Mat dr1 = fc2.backward(r1, dh2);
    const Mat dh1 = norm1.backward(h1, relu_backward(a1, dr1));
    fc1.backward(x, dh1);  // the gradient w.r.t. the input itself is not needed
  }
  void sgd(float lr) {
    fc1.sgd(lr), fc2.sgd(lr), fc3.sgd(lr);
    norm1.sgd(lr), norm2.sgd(lr);
  }
  void train(bool on) { norm1.train(on), norm2.train(on); }
  // Every parameter gradient as (data, size), for data-parallel training to all-reduce.
  std::vector<std::pair<float*, Index>> gradients() {
    std::vector<std::pair<float*, Index>> g;
    for (Linear* fc : {&fc1, &fc2, &fc3})
      g.push_back({fc->dW.data(), fc->dW.size()}), g.push_back({fc->db.data(), fc->db.size()});
    for (NormLayer<Norm>* n : {&norm1, &norm2})
      g.push_back({n->grads.weight.data(), n->grads.weight.size()}),
          g.push_back({n->grads.bias.data(), n->grads.bias.size()});
    return g;
  }
};

// Loss and accuracy of the whole set in one forward pass (eval mode: BatchNorm uses running stats).
template <class Norm>
void evaluate(MLP<Norm>& model, const Dataset& d, double& loss, double& accuracy) {
  model.train(false);
  Mat dlogits;
  int correct = 0;
  loss = softmax_cross_entropy(model.forward(d.x), d.y, dlogits, correct) / static_cast<double>(d.x.rows());
  accuracy = static_cast<double>(correct) / static_cast<double>(d.x.rows());
}

// One process: the whole batch is its own, and there is nothing to add up.
struct SingleProcess {
  std::pair<Index, Index> rows(Index batch) const { return {0, batch}; }
  void sum(float*, Index) const {}
  double sum(double v) const { return v; }
  bool prints() const { return true; }
};

// What train returns: the train loss of every epoch and the trained model.
template <class Norm>
struct Trained {
  std::vector<double> losses;
  MLP<Norm> model;
};

// SGD on the training set for kEpochs, printing a line per epoch; returns the train loss of every
// epoch and the model. `parallel` says which rows of each batch this process takes (rows), adds a buffer up over
// the processes in place (sum: the parameter gradients and the loss), and whether to print: every
// process then applies the same update (data-parallel training). `norm_args` follow num_features
// in the norms' constructors.
template <class Norm, class Parallel, class... NormArgs>
Trained<Norm> train(const char* name, const Dataset& train, const Dataset& test, const Parallel& parallel,
                    NormArgs... norm_args) {
  if (parallel.prints()) {
    std::printf("\n== MLP 2-%d-%d-%d with %s, SGD lr %.2g, batch %d, %zu train / %zu test points ==\n", kHidden,
                kHidden, kClasses, name, static_cast<double>(kLearningRate), kBatch, train.y.size(), test.y.size());
    std::printf("epoch  train loss  train acc  |  eval loss  eval acc\n");
  }
  Rng rng(3);
  Trained<Norm> out{{}, MLP<Norm>(rng, norm_args...)};
  MLP<Norm>& model = out.model;
  std::vector<Index> order(train.y.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<Index>(i);
  const auto [r0, r1] = parallel.rows(kBatch);

  std::vector<double>& losses = out.losses;
  for (int epoch = 1; epoch <= kEpochs; ++epoch) {
    for (std::size_t i = order.size() - 1; i > 0; --i)  // Fisher-Yates shuffle
      std::swap(order[i], order[rng.engine() % (i + 1)]);

    model.train(true);
    double loss_sum = 0.0;
    int correct = 0;
    Mat xb(r1 - r0, 2), dlogits;
    std::vector<int> yb(static_cast<std::size_t>(r1 - r0));
    for (std::size_t start = 0; start + kBatch <= order.size(); start += kBatch) {
      for (Index r = r0; r < r1; ++r) {
        const Index sample = order[start + static_cast<std::size_t>(r)];
        xb.row(r - r0) = train.x.row(sample);
        yb[static_cast<std::size_t>(r - r0)] = train.y[static_cast<std::size_t>(sample)];
      }
      const Mat logits = model.forward(xb);
      loss_sum += softmax_cross_entropy(logits, yb, dlogits, correct, kBatch);
      model.backward(dlogits);
      for (const auto& [data, size] : model.gradients()) parallel.sum(data, size);
      model.sgd(kLearningRate);
    }
    loss_sum = parallel.sum(loss_sum);
    const double hits = parallel.sum(static_cast<double>(correct));
    const std::size_t seen = order.size() / kBatch * kBatch;
    const double train_loss = loss_sum / static_cast<double>(seen);
    double eval_loss = 0.0, eval_acc = 0.0;
    evaluate(model, test, eval_loss, eval_acc);  // every process the whole test set: eval mode is local
    if (parallel.prints())
      std::printf("%5d  %10.4f  %8.1f%%  |  %9.4f  %7.1f%%\n", epoch, train_loss,
                  100.0 * hits / static_cast<double>(seen), eval_loss, 100.0 * eval_acc);
    losses.push_back(train_loss);
  }
  return out;
}

}  // namespace mlp
