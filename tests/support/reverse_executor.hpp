// tests/support/reverse_executor.hpp — a core executor that runs chunks in reverse order: a chunking
// bug (overlap, gap, state shared between chunks) then shows up as a mismatch with the serial run.
#pragma once

#include <normkit/core/parallel.hpp>

namespace normkit_test {

struct ReverseExecutor {
  normkit::core::Index n;
  normkit::core::Index threads() const { return n; }
  template <class F>
  void run(normkit::core::Index chunks, F&& f, normkit::core::Index = 0) const {
    for (normkit::core::Index k = chunks; k-- > 0;) f(k);
  }
};

}  // namespace normkit_test
