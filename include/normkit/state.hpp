// normkit/state.hpp — saving and restoring a functor exactly, in PyTorch's state_dict names.
//
// Every functor has
//     StateDict<P> state_dict() const;                       // a copy of its learnable and running state
//     void load_state_dict(const StateDict<P>&, bool strict = true);
// and a setter per parameter from a pointer and a size, or a std::vector (set_weight, set_bias;
// BatchNorm also set_running_mean, set_running_var and set_num_batches_tracked).
// The names are PyTorch's: "weight", "bias" (LayerNorm, RMSNorm, BatchNorm), "running_mean",
// "running_var" and num_batches_tracked (BatchNorm with track_running_stats). A parameter the
// functor was built without is not in its state and cannot be loaded into it.
// Every check runs before anything is assigned: a load or a setter that throws changes nothing.
//   - a size other than the parameter's (C, or prod(normalized_shape)): normkit::shape_error;
//   - strict load with a key missing or unexpected, or a setter for an absent parameter:
//     std::invalid_argument naming the keys; non-strict load ignores both (as PyTorch's strict=False).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "errors.hpp"
#include "options.hpp"

namespace normkit {

// Learnable and running state by PyTorch's names. Parameters are flat: a LayerNorm's weight of
// normalized_shape (2, 3) has 6 entries in row-major order, as PyTorch's .flatten() gives.
template <class P>
struct StateDict {
  std::map<std::string, Eigen::Tensor<P, 1>> tensors;
  std::optional<std::int64_t> num_batches_tracked;  // BatchNorm with tracking only
};

namespace detail {

// One named parameter of a functor: its tensor and the size it must have (0: absent).
template <class Tensor>
struct ParamSlot {
  const char* name;
  Tensor* tensor;
  Eigen::Index size;
};

template <class P, std::size_t N>
StateDict<P> state_of(const std::array<ParamSlot<const Eigen::Tensor<P, 1>>, N>& slots,
                      std::optional<std::int64_t> num_batches_tracked) {
  StateDict<P> s;
  for (const auto& slot : slots)
    if (slot.size) s.tensors.emplace(slot.name, *slot.tensor);
  s.num_batches_tracked = num_batches_tracked;
  return s;
}

// Checks everything in `s` against the slots; assigns nothing. Returns the slots to assign.
template <class P, std::size_t N>
std::vector<std::size_t> check_state(const std::string& where,
                                     const std::array<ParamSlot<Eigen::Tensor<P, 1>>, N>& slots, const StateDict<P>& s,
                                     bool has_counter, bool strict) {
  std::vector<std::size_t> present;
  std::string missing, unexpected;
  for (std::size_t i = 0; i < N; ++i) {
    if (!slots[i].size) continue;
    const auto it = s.tensors.find(slots[i].name);
    if (it == s.tensors.end()) {
      missing += std::string(missing.empty() ? "" : ", ") + slots[i].name;
      continue;
    }
    if (it->second.size() != slots[i].size)
      throw_shape(where, std::string("state \"") + slots[i].name + "\" has dimensions [" +
                             std::to_string(it->second.size()) + "] but [" + std::to_string(slots[i].size) +
                             "] was expected");
    present.push_back(i);
  }
  for (const auto& [name, tensor] : s.tensors) {
    bool known = false;
    for (const auto& slot : slots) known |= slot.size && name == slot.name;
    if (!known) unexpected += (unexpected.empty() ? "" : ", ") + name;
  }
  if (has_counter && !s.num_batches_tracked)
    missing += std::string(missing.empty() ? "" : ", ") + "num_batches_tracked";
  if (!has_counter && s.num_batches_tracked)
    unexpected += std::string(unexpected.empty() ? "" : ", ") + "num_batches_tracked";
  if (s.num_batches_tracked && *s.num_batches_tracked < 0)
    throw_invalid(where, "num_batches_tracked must be >= 0, got " + std::to_string(*s.num_batches_tracked));
  if (strict && (!missing.empty() || !unexpected.empty()))
    throw_invalid(where, "state keys do not match (missing: [" + missing + "], unexpected: [" + unexpected + "])");
  return present;
}

template <class P, std::size_t N>
void load_state(const std::string& where, const std::array<ParamSlot<Eigen::Tensor<P, 1>>, N>& slots,
                const StateDict<P>& s, std::int64_t* num_batches_tracked, bool strict) {
  const std::vector<std::size_t> present = check_state(where, slots, s, num_batches_tracked != nullptr, strict);
  for (const std::size_t i : present) *slots[i].tensor = s.tensors.at(slots[i].name);
  if (num_batches_tracked && s.num_batches_tracked) *num_batches_tracked = *s.num_batches_tracked;
}

// The setter behind set_weight() and the others: size checked before the copy.
template <class P, class Tensor>
void set_param(const std::string& where, const ParamSlot<Tensor>& slot, const P* data, Eigen::Index size) {
  if (!slot.size) throw_invalid(where, std::string("this functor has no ") + slot.name + " (built without it)");
  if (size != slot.size)
    throw_shape(where, std::string(slot.name) + " given " + std::to_string(size) + " values but [" +
                           std::to_string(slot.size) + "] was expected");
  Eigen::Tensor<P, 1> t(size);
  std::copy(data, data + size, t.data());
  *slot.tensor = std::move(t);
}

}  // namespace detail
}  // namespace normkit
