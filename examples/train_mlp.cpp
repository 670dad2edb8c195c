// train_mlp — a small classifier trained by plain SGD, with normkit's LayerNorm or BatchNorm in it.
//
// The model, data and training loop are in mlp.hpp (shared with train_mlp_mpi, its data-parallel
// twin): a 2-64-64-4 MLP with a norm after each hidden Linear and normkit's CrossEntropyLoss on its
// logits, trained on four 2-D spiral arms.
// BatchNorm trains in training mode (batch statistics) and is evaluated in eval mode (running
// statistics).
//
// Usage: train_mlp [--norm=layer|batch]      (no flag: both, one after the other)
// Exit status 1 if a run's last-epoch loss is not below 0.8 x its first-epoch loss.
#include "mlp.hpp"

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace {

using namespace mlp;

// Trains one model and checks that it learned something.
template <class Norm>
bool run(const char* name, const Dataset& train, const Dataset& test) {
  const std::vector<double> losses = mlp::train<Norm>(name, train, test, SingleProcess{});
  const double first_loss = losses.front(), last_loss = losses.back();
  const bool fell = last_loss < 0.8 * first_loss;
  std::printf("%s: train loss %.4f -> %.4f (%s: must end below 0.8 x the first epoch's)\n", name, first_loss, last_loss,
              fell ? "ok" : "FAILED");
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
