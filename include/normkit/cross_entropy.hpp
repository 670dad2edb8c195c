// normkit/cross_entropy.hpp — CrossEntropyLoss<T, P>: torch.nn.functional.cross_entropy for Eigen
// tensors of logits (N, C) or (N, C, d1, ...) with class indices as targets.
//
// Per target element (n, d...) with class t, p = softmax over C, w the class weights (1 without),
// W = sum(w), eps = label_smoothing:
//   loss = (1 - eps) * w[t] * -log p[t] + eps / C * sum_c w[c] * -log p[c]
//   Mean = sum(loss) / sum(w[t]) over the targets that are not ignore_index (NaN when there are
//   none), Sum = sum(loss), None = one loss per target element (0 where ignored).
//   dlogits[c] = g * ((1 - eps) * w[t] * (p[c] - [c == t]) + eps / C * (W * p[c] - w[c])),
//   g = dloss (Sum; None: that element's), dloss / sum(w[t]) (Mean); 0 for an ignored target.
// Numerics: one pass over the logits for the max and sum of exponentials (online, in accum_t<T>,
// core/softmax_kernels.hpp), the loss of each row in double from them; forward_backward writes
// dlogits in the same call, over the logits if you pass the same tensor. Logits of any finite
// magnitude give finite results; -Inf is a legal logit (probability 0); a NaN or +Inf poisons its
// row's loss and dlogits only. Targets are checked before anything is written.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/softmax_policies.hpp"
#include "errors.hpp"
#include "options.hpp"
#include "softmax.hpp"
#include "tensor_view.hpp"
#include "thread_pool.hpp"

namespace normkit {

enum class Reduction { Mean, Sum, None };

struct CrossEntropyOptions {
  std::int64_t ignore_index = -100;
  double label_smoothing = 0;  // in [0, 1]
  Reduction reduction = Reduction::Mean;
};

template <class T, class P = T>
class CrossEntropyLoss {
  static_assert(is_storage_v<T>, "normkit: T must be float, double, Eigen::bfloat16 or Eigen::half");
  static_assert(is_param_type_v<T, P>, "normkit: the weight type P must be T or accum_t<T>");
  using A = accum_t<T>;
  using Index = Eigen::Index;

 public:
  explicit CrossEntropyLoss(CrossEntropyOptions options = {}) : options_(options) {
    if (!(options_.label_smoothing >= 0 && options_.label_smoothing <= 1))
      detail::throw_invalid("CrossEntropyLoss", "label_smoothing must be in [0, 1], got " +
                                                    detail::number_string(options_.label_smoothing));
  }
  const CrossEntropyOptions& options() const { return options_; }
  // Class weights: size 0 (none, the default) or C.
  Eigen::Tensor<P, 1>& weight() { return weight_; }
  const Eigen::Tensor<P, 1>& weight() const { return weight_; }

  template <class L, class Y>
  Eigen::Tensor<A, 1> forward(const L& logits, const Y& target) const {
    return run(core::SerialExecutor{}, "forward", logits, target, static_cast<const NoGrad*>(nullptr),
               static_cast<NoGrad*>(nullptr));
  }
  template <class L, class Y>
  Eigen::Tensor<A, 1> forward(const Eigen::ThreadPoolDevice& device, const L& logits, const Y& target) const {
    return run(detail::PoolExecutor{device}, "forward", logits, target, static_cast<const NoGrad*>(nullptr),
               static_cast<NoGrad*>(nullptr));
  }
  template <class L, class Y, class DL, class DX>
  void backward(const L& logits, const Y& target, const DL& dloss, DX&& dlogits) const {
    run(core::SerialExecutor{}, "backward", logits, target, &dloss, &dlogits);
  }
  template <class L, class Y, class DL, class DX>
  void backward(const Eigen::ThreadPoolDevice& device, const L& logits, const Y& target, const DL& dloss,
                DX&& dlogits) const {
    run(detail::PoolExecutor{device}, "backward", logits, target, &dloss, &dlogits);
  }
  template <class L, class Y, class DX>
  Eigen::Tensor<A, 1> forward_backward(const L& logits, const Y& target, DX&& dlogits) const {
    return run(core::SerialExecutor{}, "forward_backward", logits, target, static_cast<const Ones*>(nullptr), &dlogits);
  }
  template <class L, class Y, class DX>
  Eigen::Tensor<A, 1> forward_backward(const Eigen::ThreadPoolDevice& device, const L& logits, const Y& target,
                                       DX&& dlogits) const {
    return run(detail::PoolExecutor{device}, "forward_backward", logits, target, static_cast<const Ones*>(nullptr),
               &dlogits);
  }

 private:
  struct NoGrad {};  // forward: no dlogits
  struct Ones {};    // forward_backward: dloss = 1

  // "[3, 1]" for the row-major index r of a tensor of dims d.
  template <std::size_t R>
  static std::string index_string(Index r, const std::array<Index, R>& d) {
    std::array<Index, R> idx{};
    for (std::size_t a = R; a-- > 0;) idx[a] = d[a] ? r % d[a] : 0, r = d[a] ? r / d[a] : 0;
    return detail::dims_string(idx, Index(R));
  }

  // forward (dl and dx null), backward (dl: the upstream gradient) or forward_backward (dl: Ones).
  template <class Exec, class L, class Y, class DL, class DX>
  Eigen::Tensor<A, 1> run(const Exec& exec, const char* call, const L& logits, const Y& target, const DL* dl,
                          DX* dx) const {
    using namespace detail;
    static_assert(std::is_same_v<scalar_t<L>, T>, "normkit: logits must hold T");
    static_assert(std::is_same_v<scalar_t<Y>, std::int64_t>, "normkit: target must hold std::int64_t class indices");
    static_assert(rank_v<L> >= 2 && rank_v<Y> == rank_v<L> - 1,
                  "normkit: logits must be (N, C) or (N, C, d1, ...) and target (N) or (N, d1, ...)");
    constexpr int R = rank_v<L>;
    constexpr bool grad = !std::is_same_v<DX, NoGrad>;
    constexpr bool ones = std::is_same_v<DL, Ones>;
    const std::string where = std::string("CrossEntropyLoss::") + call;

    // Shapes, all before anything is written.
    const auto dims = dims_of(logits);
    const Index C = dims[1];
    std::array<Index, std::size_t(R - 1)> tdims{};  // (N, d1, ...)
    tdims[0] = dims[0];
    for (int a = 2; a < R; ++a) tdims[std::size_t(a - 1)] = dims[std::size_t(a)];
    if (dims_of(target) != tdims)
      throw_shape(where, "target has dimensions " + dims_string(dims_of(target)) + " but logits " + dims_string(dims) +
                             " need " + dims_string(tdims) + " (logits without the class axis 1)");
    if (weight_.size() != 0 && weight_.size() != C)
      throw_shape(where, "weight() has dimensions [" + std::to_string(weight_.size()) + "] but [" + std::to_string(C) +
                             "] (C) or [0] (no class weights) was expected");
    if constexpr (grad) {
      static_assert(std::is_same_v<scalar_t<DX>, T> && rank_v<DX> == R, "normkit: dlogits must hold T, rank of logits");
      check_same_dims(where, "dlogits", *dx, "logits", logits);
    }
    const Index G = product(tdims.data(), R - 1);
    if constexpr (grad && !ones) {
      static_assert(std::is_same_v<scalar_t<DL>, A>, "normkit: dloss must hold accum_t<T>");
      const Index expected = options_.reduction == Reduction::None ? G : 1;
      if (dl->size() != expected)
        throw_shape(where, "dloss has " + std::to_string(dl->size()) + " values but " + std::to_string(expected) +
                               " were expected (" +
                               (options_.reduction == Reduction::None ? "one per target element" : "Mean or Sum: one") +
                               ")");
    }

    // Targets in the memory order of the logits' groups; map[j]: the row-major index of group j.
    const bool row_major = layout_v<L> == Eigen::RowMajor;
    const std::vector<Index> map = row_major || R <= 2 ? std::vector<Index>{}
                                                       : colmajor_to_rowmajor(tdims.data(), R - 1);
    const auto logical = [&](Index j) { return map.empty() ? j : map[std::size_t(j)]; };
    Eigen::Tensor<std::int64_t, R - 1, Eigen::RowMajor> target_copy;
    const std::int64_t* trm = in_layout<Eigen::RowMajor>(target, target_copy);
    std::vector<std::int64_t> tgt(static_cast<std::size_t>(G));
    double weight_total = 0;  // sum of w[t] over the targets not ignored
    for (Index j = 0; j < G; ++j) {
      const std::int64_t t = trm[logical(j)];
      tgt[std::size_t(j)] = t;
      if (t == options_.ignore_index) continue;
      if (t < 0 || t >= C) {
        Index r = logical(j);
        // report the first bad element in row-major order
        for (Index q = 0; q < G; ++q)
          if (trm[q] != options_.ignore_index && (trm[q] < 0 || trm[q] >= C)) {
            r = q;
            break;
          }
        throw std::out_of_range("normkit::" + where + ": target" + index_string(r, tdims) + " = " +
                                std::to_string(trm[r]) + " is out of range for C = " + std::to_string(C) +
                                " classes (valid: 0.." + std::to_string(C - 1) + ", or ignore_index " +
                                std::to_string(options_.ignore_index) + ")");
      }
      weight_total += weight_.size() ? static_cast<double>(static_cast<A>(weight_(Index(t)))) : 1.0;
    }

    const bool mean = options_.reduction == Reduction::Mean;
    std::vector<A> scale;
    if constexpr (grad) {
      scale.resize(std::size_t(G));
      for (Index j = 0; j < G; ++j) {
        double g = 1;
        if constexpr (!ones)
          g = static_cast<double>(options_.reduction == Reduction::None ? dl->data()[logical(j)] : dl->data()[0]);
        scale[std::size_t(j)] = static_cast<A>(mean ? g / weight_total : g);
      }
    }
    const bool want_loss = !grad || ones;
    std::vector<double> loss(want_loss ? std::size_t(G) : 0, 0.0);

    double W = static_cast<double>(C);
    if (weight_.size()) {
      W = 0;
      for (Index c = 0; c < C; ++c) W += static_cast<double>(static_cast<A>(weight_(c)));
    }
    const AxisGroups ag = axis_groups(dims.data(), R, 1, row_major);
    if (ag.shape.size() != 0) {
      if constexpr (grad) {
        OutputIn<layout_v<L>, DX> out(*dx);
        sweep(exec, logits.data(), out.data(), ag, tgt, scale.data(), want_loss ? loss.data() : nullptr, W,
              core::Passes::Both);
        out.commit();
      } else {
        sweep(exec, logits.data(), static_cast<T*>(nullptr), ag, tgt, nullptr, loss.data(), W, core::Passes::Reduce);
      }
    }

    if (!want_loss) return {};
    if (options_.reduction == Reduction::None) {
      Eigen::Tensor<A, 1> out(G);
      for (Index j = 0; j < G; ++j) out(logical(j)) = static_cast<A>(loss[std::size_t(j)]);
      return out;
    }
    double total = 0;
    for (Index j = 0; j < G; ++j) total += loss[std::size_t(j)];
    Eigen::Tensor<A, 1> out(1);
    out(0) = static_cast<A>(mean ? total / weight_total : total);
    return out;
  }

  template <class Exec>
  void sweep(const Exec& exec, const T* x, T* y, const detail::AxisGroups& ag, const std::vector<std::int64_t>& tgt,
             const A* scale, double* loss, double W, core::Passes passes) const {
    core::SoftmaxForward<core::SoftmaxSweep::CrossEntropy, A, core::LoadX<T>, core::StoreY<T>, P> pol;
    pol.s = ag.shape;
    pol.stream = core::stream_output<T>(ag.shape.size() * ag.blocks);
    pol.ce.ignore_index = options_.ignore_index;
    pol.ce.weight = weight_.size() ? weight_.data() : nullptr;
    pol.ce.smoothing = options_.label_smoothing;
    pol.ce.weight_sum = W;
    for (Index b = 0; b < ag.blocks; ++b) {
      const Index g0 = b * ag.shape.groups;
      pol.x = core::LoadX<T>{x + b * ag.block_size};
      pol.y = core::StoreY<T>{y ? y + b * ag.block_size : y};
      pol.ce.target = tgt.data() + g0;
      pol.ce.scale = scale ? scale + g0 : scale;
      pol.ce.loss = loss ? loss + g0 : loss;
      core::run_groups(exec, ag.shape, pol, passes);
    }
  }

  CrossEntropyOptions options_;
  Eigen::Tensor<P, 1> weight_;
};

}  // namespace normkit
