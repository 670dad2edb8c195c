// Consumer smoke test: builds a LayerNorm with normkit's API directly (the library's header brings
// normkit's include path and C++17 with it) and checks it through the consumer library.
// Exits non-zero on a mismatch.
#include "normkit_consumer/check.hpp"

int main() {
  normkit::LayerNorm<float> ln(3);
  ln.weight().setConstant(2.0f);
  ln.bias().setConstant(1.0f);
  return normkit_consumer::check_worked_example(ln) ? 0 : 1;
}
