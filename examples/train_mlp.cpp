// train_mlp — a small classifier trained by plain SGD, with normkit's LayerNorm or BatchNorm in it.
//
// The model, data and training loop are in mlp.hpp (shared with train_mlp_mpi, its data-parallel
// twin): a 2-64-64-4 MLP with a norm after each hidden Linear and normkit's CrossEntropyLoss on its
// logits, trained on four 2-D spiral arms.
// BatchNorm trains in training mode (batch statistics) and is evaluated in eval mode (running
// statistics). For inference the trained BatchNorm model is then folded: each BatchNorm merged into
// the Linear before it (BatchNorm::fold_into), leaving a 2-64-64-4 MLP with no norm layer, whose
// test-set logits must match the unfolded model's in eval mode (the largest difference is printed).
//
// Usage: train_mlp [--norm=layer|batch]      (no flag: both, one after the other)
// Exit status 1 if a run's last-epoch loss is not below 0.8 x its first-epoch loss, or if the folded
// model's logits differ from the unfolded ones by more than 1e-4 of their largest magnitude.
#include "mlp.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using namespace mlp;

// The Linear's weight (out, in) and bias (out) as tensors, the BatchNorm after it folded into them.
void fold(const normkit::BatchNorm<float>& norm, Linear& fc) {
  Eigen::TensorMap<Eigen::Tensor<float, 2, Eigen::RowMajor>> weight(fc.W.data(), fc.W.rows(), fc.W.cols());
  Eigen::TensorMap<Eigen::Tensor<float, 1>> bias(fc.b.data(), fc.b.size());
  norm.fold_into(weight, bias, /*out_axis=*/0);
}

// The trained model's eval-mode logits on the test set against those of its folded copy. Folding
// rounds each weight and bias once to float, so the logits move by a few float ulps of the terms
// summed through two hidden layers of 64 (~1e-6 of their size); a fold on the wrong axis, or one
// that dropped the mean or the shift, moves them by O(1). The bound 1e-4 sits between the two.
bool check_folding(MLP<normkit::BatchNorm<float>>& model, const Dataset& test) {
  model.train(false);
  const Mat logits = model.forward(test.x);
  Linear fc1 = model.fc1, fc2 = model.fc2;
  fold(model.norm1.norm, fc1);
  fold(model.norm2.norm, fc2);
  const Mat folded = model.fc3.forward(relu(fc2.forward(relu(fc1.forward(test.x)))));
  float diff = 0, size = 0;
  for (Index i = 0; i < logits.size(); ++i) {
    diff = std::max(diff, std::abs(folded.data()[i] - logits.data()[i]));
    size = std::max(size, std::abs(logits.data()[i]));
  }
  const bool ok = diff <= 1e-4f * size;
  std::printf(
      "BatchNorm folded into the Linear layers: %td x %td test logits, largest |logit| %.3f, largest "
      "difference from the unfolded model %.2e (%.1e of it; %s: must be <= 1e-4)\n",
      logits.rows(), logits.cols(), static_cast<double>(size), static_cast<double>(diff),
      static_cast<double>(diff / size), ok ? "ok" : "FAILED");
  return ok;
}

// Trains one model and checks that it learned something (and, for BatchNorm, that it folds).
template <class Norm>
bool run(const char* name, const Dataset& train, const Dataset& test) {
  mlp::Trained<Norm> trained = mlp::train<Norm>(name, train, test, SingleProcess{});
  const double first_loss = trained.losses.front(), last_loss = trained.losses.back();
  const bool fell = last_loss < 0.8 * first_loss;
  std::printf("%s: train loss %.4f -> %.4f (%s: must end below 0.8 x the first epoch's)\n", name, first_loss, last_loss,
              fell ? "ok" : "FAILED");
  if constexpr (std::is_same_v<Norm, normkit::BatchNorm<float>>) return check_folding(trained.model, test) && fell;
  return fell;
}

}  // namespace

int main(int argc, char** argv) {
  bool layer = true, batch = true;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--norm=layer") {
      layer = true, batch = false;
    } else if (arg == "--norm=batch") {
      layer = false, batch = true;
    } else {
      std::fprintf(stderr, "usage: %s [--norm=layer|batch]   (no flag: train with both)\n", argv[0]);
      return 2;
    }
  }
  try {
    const Dataset train = make_spirals(500, 1);  // 2000 points
    const Dataset test = make_spirals(250, 2);   // 1000 points, same distribution, other seed
    bool ok = true;
    if (layer) ok = run<normkit::LayerNorm<float>>("LayerNorm", train, test) && ok;
    if (batch) ok = run<normkit::BatchNorm<float>>("BatchNorm", train, test) && ok;
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_mlp: unexpected exception: %s\n", e.what());
    return 1;
  }
}
