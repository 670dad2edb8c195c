// normkit/errors.hpp — the exceptions normkit throws and the helpers that word them.
//
// Every message starts with the functor ("normkit::LayerNorm: ..."), names the argument, and for a
// shape problem gives the expected and the actual dimensions, e.g.
//   normkit::LayerNorm::forward: y has dimensions [2, 4] but x has [2, 3] (they must be equal)
// Checks run before anything is written, so a throwing call leaves outputs and state untouched.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include <Eigen/Core>

namespace normkit {

// A dimension mismatch. Derived from std::invalid_argument so that callers can catch either.
class shape_error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

// "[2, 3, 4]" for any container of indices (Eigen DSizes, std::array, std::vector, ...).
template <class Dims>
std::string dims_string(const Dims& dims, Eigen::Index count) {
  std::ostringstream s;
  s << '[';
  for (Eigen::Index i = 0; i < count; ++i) s << (i ? ", " : "") << dims[static_cast<std::size_t>(i)];
  s << ']';
  return s.str();
}

// A double as a person reads it: %g-style, enough digits to tell -1e-09 from 0 (std::to_string
// would print "-0.000000").
inline std::string number_string(double v) {
  std::ostringstream s;
  s.precision(6);
  s << v;
  return s.str();
}

[[noreturn]] inline void throw_shape(const std::string& where, const std::string& what) {
  throw shape_error("normkit::" + where + ": " + what);
}

[[noreturn]] inline void throw_invalid(const std::string& where, const std::string& what) {
  throw std::invalid_argument("normkit::" + where + ": " + what);
}

}  // namespace detail
}  // namespace normkit
