// The consumer library's one function: worked example 2 of the contract, serial and threaded.
#include "normkit_consumer/check.hpp"

#include <cmath>
#include <cstdio>

namespace {

bool matches(const Eigen::Tensor<float, 2>& y, const char* what) {
  const float expected[2][3] = {{-1.4495f, 1.0f, 3.4495f}, {3.4495f, 1.0f, -1.4495f}};
  bool ok = true;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      if (!(std::fabs(y(i, j) - expected[i][j]) <= 5e-4f)) {
        std::fprintf(stderr, "normkit_consumer: %s y(%d, %d) = %.6f, expected %.4f\n", what, i, j,
                     static_cast<double>(y(i, j)), static_cast<double>(expected[i][j]));
        ok = false;
      }
  return ok;
}

}  // namespace

namespace normkit_consumer {

bool check_worked_example(const normkit::LayerNorm<float>& ln) {
  Eigen::Tensor<float, 2> x(2, 3);
  x.setValues({{5, 10, 15}, {-5, -10, -15}});

  Eigen::Tensor<float, 2> y(2, 3);
  const auto stats = ln.forward(x, y);

  Eigen::ThreadPool pool(2);
  Eigen::ThreadPoolDevice device(&pool, 2);
  Eigen::Tensor<float, 2> y_threaded(2, 3);
  const auto stats_threaded = ln.forward(device, x, y_threaded);

  const bool ok = matches(y, "forward") && matches(y_threaded, "threaded forward") && stats.rstd.size() == 2 &&
                  stats_threaded.rstd.size() == 2;
  if (ok)
    std::printf("normkit_consumer: LayerNorm forward OK, y = [[%.4f, %.4f, %.4f], [%.4f, %.4f, %.4f]]\n",
                static_cast<double>(y(0, 0)), static_cast<double>(y(0, 1)), static_cast<double>(y(0, 2)),
                static_cast<double>(y(1, 0)), static_cast<double>(y(1, 1)), static_cast<double>(y(1, 2)));
  return ok;
}

}  // namespace normkit_consumer
