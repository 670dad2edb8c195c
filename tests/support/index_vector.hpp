// tests/support/index_vector.hpp — IndexVector<T>: a std::vector sized and indexed with Eigen::Index.
//
// The core counts and indexes with the signed Eigen::Index; the tests that drive it directly keep
// their buffers in IndexVector so that they index as the kernels do, with no cast at every
// subscript (the tests build with -Wsign-conversion as an error).
#pragma once

#include <cstddef>
#include <vector>

#include <Eigen/Core>

template <class T>
class IndexVector : public std::vector<T> {
 public:
  IndexVector() = default;
  explicit IndexVector(Eigen::Index n, const T& value = T()) : std::vector<T>(static_cast<std::size_t>(n), value) {}

  Eigen::Index size() const { return static_cast<Eigen::Index>(std::vector<T>::size()); }
  T& operator[](Eigen::Index i) { return std::vector<T>::operator[](static_cast<std::size_t>(i)); }
  const T& operator[](Eigen::Index i) const { return std::vector<T>::operator[](static_cast<std::size_t>(i)); }
};
