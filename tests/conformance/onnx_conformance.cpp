// ONNX conformance: normkit against ONNX's own backend node tests for LayerNormalization,
// RMSNormalization, BatchNormalization, GroupNormalization and InstanceNormalization.
//
// The data is not in this repository. CMake passes the path of the read-only `cases.txt` (format
// "NKONNX 1", described with the mapping of ONNX attributes onto normkit's API in the README.md next
// to it) as NORMKIT_ONNX_CASES; this file parses it at run time. Every case runs through the public
// contract API in several forms that must all agree with ONNX's outputs:
//   - a const RowMajor TensorMap in, a temporary RowMajor TensorMap out;
//   - ColMajor Tensors in and out;
//   - operator() on the RowMajor TensorMap (LayerNorm/RMSNorm), channels-last RowMajor data with
//     channel_axis = -1 (BatchNorm, GroupNorm, InstanceNorm);
//   - the ThreadPoolDevice overload with mixed layouts: ColMajor in, RowMajor out (LayerNorm/RMSNorm),
//     channels-last ColMajor with channel_axis = R - 1 (BatchNorm, GroupNorm, InstanceNorm).
// Tolerance: |got - want| <= 1e-5 + 1.3e-6 |want| (torch.testing.assert_close's float32 defaults).
// GroupNormalization's opset 18 per-group scale and bias are expanded to channels (opset 21's are per
// channel); an op the harness does not know would be counted as skipped (none is: 46 of 46 run).
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <map>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef NORMKIT_ONNX_CASES
#error "NORMKIT_ONNX_CASES must be defined as the path of the ONNX conformance cases.txt"
#endif

namespace {

using Index = Eigen::Index;
template <int R>
using RowT = Eigen::Tensor<float, R, Eigen::RowMajor>;
template <int R>
using ColT = Eigen::Tensor<float, R, Eigen::ColMajor>;

constexpr double kAtol = 1e-5;
constexpr double kRtol = 1.3e-6;

// ================================================================================================
// Reading cases.txt
// ================================================================================================
struct OnnxTensor {
  std::string name;
  std::vector<Index> dims;
  std::vector<float> values;  // row-major (last axis fastest)
};

struct OnnxCase {
  std::string name, op;
  int opset = 0;
  std::map<std::string, double> attrs;  // int and float attributes alike (floats are float32 values)
  std::vector<OnnxTensor> inputs, outputs;

  double attr(const std::string& key) const {
    const auto it = attrs.find(key);
    if (it == attrs.end()) throw std::runtime_error("case " + name + " has no attribute " + key);
    return it->second;
  }
};

class Tokens {
 public:
  explicit Tokens(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open " + path);
    std::string line;
    while (std::getline(in, line)) {
      const auto first = line.find_first_not_of(" \t\r");
      if (first == std::string::npos || line[first] == '#') continue;
      std::istringstream words(line);
      std::string w;
      while (words >> w) tokens_.push_back(w);
    }
  }
  bool done() const { return pos_ >= tokens_.size(); }
  const std::string& next() {
    if (done()) throw std::runtime_error("cases.txt ends early");
    return tokens_[pos_++];
  }
  void expect(const std::string& word) {
    const std::string& got = next();
    if (got != word) throw std::runtime_error("cases.txt: expected '" + word + "', read '" + got + "'");
  }
  long integer() { return std::stol(next()); }

 private:
  std::vector<std::string> tokens_;
  std::size_t pos_ = 0;
};

OnnxTensor read_tensor(Tokens& t, const std::string& keyword) {
  t.expect(keyword);
  t.integer();  // k: the position, equal to the order of appearance
  OnnxTensor tensor;
  tensor.name = t.next();
  const std::string dtype = t.next();
  if (dtype != "float32" && dtype != "float64" && dtype != "float16" && dtype != "bfloat16")
    throw std::runtime_error("cases.txt: unsupported dtype " + dtype);
  const long rank = t.integer();
  Index count = 1;
  for (long i = 0; i < rank; ++i) {
    tensor.dims.push_back(t.integer());
    count *= tensor.dims.back();
  }
  tensor.values.reserve(static_cast<std::size_t>(count));
  for (Index i = 0; i < count; ++i) {
    const std::string& word = t.next();
    // float32 is written with %.9g (strtof round-trips it); wider types are rounded to float.
    tensor.values.push_back(dtype == "float64" ? static_cast<float>(std::strtod(word.c_str(), nullptr))
                                               : std::strtof(word.c_str(), nullptr));
  }
  return tensor;
}

std::vector<OnnxCase> read_cases(const std::string& path, long& declared) {
  Tokens t(path);
  t.expect("NKONNX");
  t.expect("1");
  std::vector<OnnxCase> cases;
  declared = -1;
  while (!t.done()) {
    const std::string word = t.next();
    if (word == "source") {
      t.next(), t.next(), t.next();  // repository, commit, folder
    } else if (word == "cases") {
      declared = t.integer();
    } else if (word == "case") {
      OnnxCase c;
      c.name = t.next();
      c.op = t.next();
      c.opset = static_cast<int>(t.integer());
      const long n_attr = t.integer(), n_in = t.integer(), n_out = t.integer();
      for (long i = 0; i < n_attr; ++i) {
        t.expect("attr");
        const std::string key = t.next(), type = t.next(), value = t.next();
        t.next();  // explicit | default
        c.attrs[key] = type == "float" ? static_cast<double>(std::strtof(value.c_str(), nullptr)) : std::stod(value);
      }
      for (long i = 0; i < n_in; ++i) c.inputs.push_back(read_tensor(t, "in"));
      for (long i = 0; i < n_out; ++i) c.outputs.push_back(read_tensor(t, "out"));
      t.expect("end");
      cases.push_back(std::move(c));
    } else {
      throw std::runtime_error("cases.txt: unexpected token '" + word + "'");
    }
  }
  return cases;
}

// ================================================================================================
// Comparing
// ================================================================================================
// Collects one message per mismatch for the case being checked.
struct Mismatches {
  std::vector<std::string> messages;

  void compare(const std::string& what, const std::vector<double>& got, const std::vector<double>& want) {
    if (got.size() != want.size()) {
      messages.push_back(what + ": " + std::to_string(got.size()) + " values, ONNX has " + std::to_string(want.size()));
      return;
    }
    std::size_t bad = 0, worst = 0;
    double worst_excess = -1.0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      const double diff = std::abs(got[i] - want[i]), tol = kAtol + kRtol * std::abs(want[i]);
      if (!(diff <= tol)) {  // NaN counts as a mismatch
        ++bad;
        const double excess = std::isnan(diff) ? 1e300 : diff / tol;
        if (excess > worst_excess) worst_excess = excess, worst = i;
      }
    }
    if (bad == 0) return;
    std::ostringstream s;
    s.precision(9);
    s << what << ": " << bad << " of " << got.size() << " values out of tolerance; worst at flat index " << worst
      << ": got " << got[worst] << ", want " << want[worst] << " (|diff| " << std::abs(got[worst] - want[worst])
      << " > " << kAtol + kRtol * std::abs(want[worst]) << ")";
    messages.push_back(s.str());
  }
  void compare(const std::string& what, const std::vector<double>& got, const std::vector<float>& want) {
    compare(what, got, std::vector<double>(want.begin(), want.end()));
  }
};

template <class Vec>
std::vector<double> to_double(const Vec& v) {
  return std::vector<double>(v.data(), v.data() + v.size());
}

template <int R>
Eigen::array<Index, static_cast<std::size_t>(R)> as_dims(const std::vector<Index>& d) {
  Eigen::array<Index, static_cast<std::size_t>(R)> a;
  for (int i = 0; i < R; ++i) a[static_cast<std::size_t>(i)] = d[static_cast<std::size_t>(i)];
  return a;
}

// Calls f(flat, index) for every multi-index of dims d, in row-major order (last axis fastest);
// flat is the element's position in row-major storage. Layout conversions below are written with it
// rather than with swap_layout().shuffle(), whose AVX-512 code trips GCC 12's -Wmaybe-uninitialized.
template <int R, class F>
void for_each_index(const Eigen::array<Index, static_cast<std::size_t>(R)>& d, F f) {
  Index total = 1;
  for (Index n : d) total *= n;
  Eigen::array<Index, static_cast<std::size_t>(R)> index{};
  for (Index flat = 0; flat < total; ++flat) {
    f(flat, index);
    for (int a = R - 1; a >= 0; --a) {
      const std::size_t k = static_cast<std::size_t>(a);
      if (++index[k] < d[k]) break;
      index[k] = 0;
    }
  }
}

template <class T>
auto dims_array(const T& t) {
  constexpr int R = Eigen::internal::traits<T>::NumDimensions;
  Eigen::array<Index, static_cast<std::size_t>(R)> d;
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = t.dimensions()[i];  // dimension() takes size_t or Index
  return d;
}

// The same logical tensor (same dims, same value at every index) stored ColMajor.
template <int R>
ColT<R> to_col_major(const std::vector<float>& row_major, const Eigen::array<Index, static_cast<std::size_t>(R)>& d) {
  ColT<R> c(d);
  for_each_index<R>(d, [&](Index flat, const Eigen::array<Index, static_cast<std::size_t>(R)>& i) {
    c(i) = row_major[static_cast<std::size_t>(flat)];
  });
  return c;
}

// A tensor's values in row-major order of its logical indices, whatever its layout.
template <class T>
std::vector<double> row_major_values(const T& t) {
  constexpr int R = Eigen::internal::traits<T>::NumDimensions;
  std::vector<double> out(static_cast<std::size_t>(t.size()));
  for_each_index<R>(dims_array(t), [&](Index flat, const Eigen::array<Index, static_cast<std::size_t>(R)>& i) {
    out[static_cast<std::size_t>(flat)] = t(i);
  });
  return out;
}

// Axis permutation of row-major data: result axis k is source axis perm[k].
template <int R, class V>
std::vector<V> permute(const std::vector<V>& src, const Eigen::array<Index, static_cast<std::size_t>(R)>& d,
                       const Eigen::array<Index, static_cast<std::size_t>(R)>& perm,
                       Eigen::array<Index, static_cast<std::size_t>(R)>& permuted_dims) {
  for (int k = 0; k < R; ++k)
    permuted_dims[static_cast<std::size_t>(k)] = d[static_cast<std::size_t>(perm[static_cast<std::size_t>(k)])];
  std::vector<V> out(src.size());
  for_each_index<R>(d, [&](Index flat, const Eigen::array<Index, static_cast<std::size_t>(R)>& i) {
    Index to = 0;  // row-major position of the permuted index
    for (int k = 0; k < R; ++k) {
      const std::size_t kk = static_cast<std::size_t>(k);
      to = to * permuted_dims[kk] + i[static_cast<std::size_t>(perm[kk])];
    }
    out[static_cast<std::size_t>(to)] = src[static_cast<std::size_t>(flat)];
  });
  return out;
}

// ================================================================================================
// LayerNormalization and RMSNormalization
// ================================================================================================
// The contract's constructor takes the normalized shape as an initializer_list: build one from the
// trailing dims, whose count is only known at run time.
template <class Norm, class Options>
Norm make_rowwise_norm(const std::vector<Index>& s, const Options& options) {
  using List = std::initializer_list<Index>;
  switch (s.size()) {
    case 1: return Norm(List{s[0]}, options);
    case 2: return Norm(List{s[0], s[1]}, options);
    case 3: return Norm(List{s[0], s[1], s[2]}, options);
    case 4: return Norm(List{s[0], s[1], s[2], s[3]}, options);
    default: throw std::runtime_error("normalized rank " + std::to_string(s.size()) + " is not supported here");
  }
}

void set_parameter(Eigen::Tensor<float, 1>& param, const OnnxTensor& onnx, const char* which) {
  if (static_cast<std::size_t>(param.size()) != onnx.values.size())
    throw std::runtime_error(std::string(which) + " has " + std::to_string(param.size()) + " values, ONNX's " +
                             onnx.name + " has " + std::to_string(onnx.values.size()));
  std::copy(onnx.values.begin(), onnx.values.end(), param.data());
}

// Checks one LayerNormalization (is_layer_norm) or RMSNormalization case whose X has rank R.
template <int R, class Norm, class Options>
void check_rowwise(const OnnxCase& c, bool is_layer_norm, Eigen::ThreadPoolDevice& device, Mismatches& m) {
  const OnnxTensor& X = c.inputs.at(0);
  const std::vector<Index> dims = X.dims;
  long axis = static_cast<long>(c.attr("axis"));
  if (axis < 0) axis += R;
  if (axis < 0 || axis >= R) throw std::runtime_error("axis out of range");

  Options options;
  options.eps = c.attr("epsilon");  // eps inside the sqrt: the default placement
  options.elementwise_affine = true;
  options.bias = is_layer_norm && c.inputs.size() > 2;  // RMSNormalization has no bias; LN's B is optional
  const std::vector<Index> normalized(dims.begin() + axis, dims.end());
  Norm norm = make_rowwise_norm<Norm>(normalized, options);
  set_parameter(norm.weight(), c.inputs.at(1), "weight()");
  if (options.bias) set_parameter(norm.bias(), c.inputs.at(2), "bias()");

  const std::vector<float>& want_y = c.outputs.at(0).values;
  const auto check_stats = [&](const std::string& form, const normkit::NormStats<float>& stats) {
    if (!is_layer_norm) return;  // ONNX's RMSNormalization has no statistics outputs
    m.compare(form + ": Mean", to_double(stats.mean), c.outputs.at(1).values);
    m.compare(form + ": InvStdDev", to_double(stats.rstd), c.outputs.at(2).values);
  };

  const auto d = as_dims<R>(dims);
  const Eigen::TensorMap<const RowT<R>> x(X.values.data(), d);

  {  // 1. const RowMajor TensorMap in, temporary RowMajor TensorMap out
    RowT<R> y(d);
    const auto stats = norm.forward(x, Eigen::TensorMap<RowT<R>>(y.data(), d));
    m.compare("RowMajor TensorMap: Y", row_major_values(y), want_y);
    check_stats("RowMajor TensorMap", stats);
  }
  const ColT<R> xc = to_col_major<R>(X.values, d);
  {  // 2. ColMajor Tensors
    ColT<R> y(d);
    const auto stats = norm.forward(xc, y);
    m.compare("ColMajor Tensor: Y", row_major_values(y), want_y);
    check_stats("ColMajor Tensor", stats);
  }
  {  // 3. operator(): a new tensor, same dims and layout as the input
    const auto y = norm(x);
    m.compare("operator() on RowMajor TensorMap: Y", row_major_values(y), want_y);
  }
  {  // 4. ThreadPoolDevice, ColMajor in, RowMajor out
    RowT<R> y(d);
    const auto stats = norm.forward(device, xc, y);
    m.compare("ThreadPoolDevice ColMajor->RowMajor: Y", row_major_values(y), want_y);
    check_stats("ThreadPoolDevice ColMajor->RowMajor", stats);
  }
}

template <int R>
void check_layer_or_rms(const OnnxCase& c, Eigen::ThreadPoolDevice& device, Mismatches& m) {
  if (c.op == "LayerNormalization")
    check_rowwise<R, normkit::LayerNorm<float>, normkit::LayerNormOptions>(c, true, device, m);
  else check_rowwise<R, normkit::RMSNorm<float>, normkit::RMSNormOptions>(c, false, device, m);
}

// ================================================================================================
// BatchNormalization (opset 15)
// ================================================================================================
template <int R>
void check_batchnorm(const OnnxCase& c, Eigen::ThreadPoolDevice& device, Mismatches& m) {
  static_assert(R >= 2, "BatchNorm needs rank >= 2");
  const OnnxTensor& X = c.inputs.at(0);
  const OnnxTensor &scale = c.inputs.at(1), &bias = c.inputs.at(2);
  const OnnxTensor &input_mean = c.inputs.at(3), &input_var = c.inputs.at(4);
  const double eps = c.attr("epsilon");
  const double onnx_momentum = c.attr("momentum");  // weights the OLD running value
  const bool training = c.attr("training_mode") != 0.0;
  const Index C = X.dims.at(1);
  const Index n = static_cast<Index>(X.values.size()) / C;  // values per channel

  // What a BatchNorm must hold after the forward pass.
  const std::vector<float>& want_y = c.outputs.at(0).values;
  std::vector<double> want_running_mean, want_running_var;
  if (training) {
    // running_mean: ONNX's output as is. running_var: ONNX uses the population variance, the contract
    // (like PyTorch) the unbiased one; derived from ONNX's own outputs as its README explains:
    //   onnx_var = m iv + (1-m) pop  =>  contract_var = m iv + (1-m) pop n/(n-1) = onnx_var + (onnx_var - m iv)/(n-1)
    for (float v : c.outputs.at(1).values) want_running_mean.push_back(v);
    for (std::size_t i = 0; i < c.outputs.at(2).values.size(); ++i) {
      const double ov = c.outputs.at(2).values[i], iv = input_var.values.at(i);
      want_running_var.push_back(ov + (ov - onnx_momentum * iv) / static_cast<double>(n - 1));
    }
  } else {  // eval leaves the running statistics as they were
    want_running_mean.assign(input_mean.values.begin(), input_mean.values.end());
    want_running_var.assign(input_var.values.begin(), input_var.values.end());
  }

  const auto fresh = [&](normkit::BatchNorm<float>& bn) {
    set_parameter(bn.weight(), scale, "weight()");
    set_parameter(bn.bias(), bias, "bias()");
    set_parameter(bn.running_mean(), input_mean, "running_mean()");
    set_parameter(bn.running_var(), input_var, "running_var()");
    bn.train(training);
  };
  const auto check_state =
      [&](const std::string& form, const normkit::BatchNorm<float>& bn, const normkit::NormStats<float>& stats) {
    m.compare(form + ": running_mean", to_double(bn.running_mean()), want_running_mean);
    m.compare(form + ": running_var" + (training ? " (unbiased, derived from ONNX's)" : " (unchanged in eval)"),
              to_double(bn.running_var()), want_running_var);
    if (training && bn.num_batches_tracked() != 1)
      m.messages.push_back(form + ": num_batches_tracked is " + std::to_string(bn.num_batches_tracked()) + ", want 1");
    if (!training) {  // eval with tracking: stats = {running_mean, 1/sqrt(running_var + eps)}
      std::vector<double> want_rstd;
      for (float v : input_var.values) want_rstd.push_back(1.0 / std::sqrt(static_cast<double>(v) + eps));
      m.compare(form + ": NormStats mean (eval)", to_double(stats.mean), input_mean.values);
      m.compare(form + ": NormStats rstd (eval)", to_double(stats.rstd), want_rstd);
    }
  };
  normkit::BatchNormOptions options;
  options.eps = eps;
  options.momentum = 1.0 - onnx_momentum;  // the contract's momentum weights the NEW value

  const auto d = as_dims<R>(X.dims);
  const Eigen::TensorMap<const RowT<R>> x(X.values.data(), d);
  // Channels-last: (N, C, D1, ...) -> (N, D1, ..., C), and back.
  Eigen::array<Index, static_cast<std::size_t>(R)> to_last, from_last, d_last, d_back;
  to_last[0] = 0;
  for (int i = 1; i < R - 1; ++i) to_last[static_cast<std::size_t>(i)] = i + 1;
  to_last[R - 1] = 1;
  for (int i = 0; i < R; ++i) from_last[static_cast<std::size_t>(to_last[static_cast<std::size_t>(i)])] = i;
  const std::vector<float> x_last = permute<R>(X.values, d, to_last, d_last);
  const auto back_from_last = [&](const std::vector<double>& y_last) {
    return permute<R>(y_last, d_last, from_last, d_back);
  };

  {  // 1. const RowMajor TensorMap in, temporary RowMajor TensorMap out; channel_axis = 1
    normkit::BatchNorm<float> bn(C, options);
    fresh(bn);
    RowT<R> y(d);
    const auto stats = bn.forward(x, Eigen::TensorMap<RowT<R>>(y.data(), d));
    m.compare("RowMajor TensorMap: Y", row_major_values(y), want_y);
    check_state("RowMajor TensorMap", bn, stats);
  }
  {  // 2. ColMajor Tensors; channel_axis = 1
    normkit::BatchNorm<float> bn(C, options);
    fresh(bn);
    const ColT<R> xc = to_col_major<R>(X.values, d);
    ColT<R> y(d);
    const auto stats = bn.forward(xc, y);
    m.compare("ColMajor Tensor: Y", row_major_values(y), want_y);
    check_state("ColMajor Tensor", bn, stats);
  }
  {  // 3. channels-last RowMajor; channel_axis = -1
    normkit::BatchNormOptions last = options;
    last.channel_axis = -1;
    normkit::BatchNorm<float> bn(C, last);
    fresh(bn);
    const Eigen::TensorMap<const RowT<R>> xl(x_last.data(), d_last);
    RowT<R> y_last(d_last);
    const auto stats = bn.forward(xl, y_last);
    m.compare("channels-last RowMajor, channel_axis -1: Y", back_from_last(row_major_values(y_last)), want_y);
    check_state("channels-last RowMajor, channel_axis -1", bn, stats);
  }
  {  // 4. ThreadPoolDevice, channels-last ColMajor; channel_axis = R - 1
    normkit::BatchNormOptions last = options;
    last.channel_axis = R - 1;
    normkit::BatchNorm<float> bn(C, last);
    fresh(bn);
    const ColT<R> xl = to_col_major<R>(x_last, d_last);
    ColT<R> y_last(d_last);
    const auto stats = bn.forward(device, xl, y_last);
    m.compare("ThreadPoolDevice channels-last ColMajor, channel_axis R-1: Y", back_from_last(row_major_values(y_last)),
              want_y);
    check_state("ThreadPoolDevice channels-last ColMajor, channel_axis R-1", bn, stats);
  }
}

// ================================================================================================
// GroupNormalization (opsets 18 and 21) and InstanceNormalization (opset 22)
// ================================================================================================
// GroupNormalization: GroupNorm(num_groups, C) with per-channel weight/bias; opset 18's per-group
// scale and bias (G values) are expanded to the C/G channels of each group, opset 21's are per
// channel already. InstanceNormalization: InstanceNorm(C) with affine (per-channel scale and B),
// instance statistics (no running statistics). Both: eps inside the sqrt, channel axis 1.
template <int R>
void check_group_or_instance(const OnnxCase& c, Eigen::ThreadPoolDevice& device, Mismatches& m) {
  static_assert(R >= 3, "GroupNormalization/InstanceNormalization cases have rank >= 3");
  const bool group = c.op == "GroupNormalization";
  const OnnxTensor& X = c.inputs.at(0);
  const Index C = X.dims.at(1);
  const Index G = group ? static_cast<Index>(c.attr("num_groups")) : C;
  const double eps = c.attr("epsilon");
  // Per-channel weight and bias (opset 18's per-group ones expanded).
  const auto per_channel = [&](const OnnxTensor& t) {
    std::vector<float> v;
    const Index n = static_cast<Index>(t.values.size());
    if (n == C) return t.values;
    if (!(group && n == G))
      throw std::runtime_error(t.name + " has " + std::to_string(n) + " values for C " + std::to_string(C));
    for (Index ch = 0; ch < C; ++ch) v.push_back(t.values[static_cast<std::size_t>(ch / (C / G))]);
    return v;
  };
  const std::vector<float> weight = per_channel(c.inputs.at(1)), bias = per_channel(c.inputs.at(2));
  const std::vector<float>& want_y = c.outputs.at(0).values;

  // Runs one form: a functor with the given channel_axis, forward(x, y), Y compared in NCHW order.
  const auto run =
      [&](const std::string& form, Index channel_axis, const auto& x, auto& y, const auto& to_nchw, bool pool) {
    const auto forward = [&](auto& f) {
      OnnxTensor w{"weight", {C}, weight}, b{"bias", {C}, bias};
      set_parameter(f.weight(), w, "weight()");
      set_parameter(f.bias(), b, "bias()");
      const auto stats = pool ? f.forward(device, x, y) : f.forward(x, y);
      if (stats.mean.size() != X.dims[0] * G)
        m.messages.push_back(form + ": stats have " + std::to_string(stats.mean.size()) + " entries, want N * G");
    };
    if (group) {
      normkit::GroupNorm<float> f(G, C, normkit::GroupNormOptions{eps, true, channel_axis});
      forward(f);
    } else {
      normkit::InstanceNormOptions o;
      o.eps = eps, o.affine = true, o.channel_axis = channel_axis;
      normkit::InstanceNorm<float> f(C, o);
      forward(f);
    }
    m.compare(form + ": Y", to_nchw(row_major_values(y)), want_y);
  };

  const auto d = as_dims<R>(X.dims);
  const auto same = [](const std::vector<double>& v) { return v; };
  // Channels-last: (N, C, D1, ...) -> (N, D1, ..., C), and back.
  Eigen::array<Index, static_cast<std::size_t>(R)> to_last, from_last, d_last, d_back;
  to_last[0] = 0;
  for (int i = 1; i < R - 1; ++i) to_last[static_cast<std::size_t>(i)] = i + 1;
  to_last[R - 1] = 1;
  for (int i = 0; i < R; ++i) from_last[static_cast<std::size_t>(to_last[static_cast<std::size_t>(i)])] = i;
  const std::vector<float> x_last = permute<R>(X.values, d, to_last, d_last);
  const auto back_from_last = [&](const std::vector<double>& y_last) {
    return permute<R>(y_last, d_last, from_last, d_back);
  };

  {  // 1. const RowMajor TensorMap in, temporary RowMajor TensorMap out; channel_axis = 1
    const Eigen::TensorMap<const RowT<R>> x(X.values.data(), d);
    RowT<R> y(d);
    Eigen::TensorMap<RowT<R>> ym(y.data(), d);
    run("RowMajor TensorMap", 1, x, ym, same, false);
  }
  {  // 2. ColMajor Tensors; channel_axis = 1
    const ColT<R> x = to_col_major<R>(X.values, d);
    ColT<R> y(d);
    run("ColMajor Tensor", 1, x, y, same, false);
  }
  {  // 3. channels-last RowMajor; channel_axis = -1
    const Eigen::TensorMap<const RowT<R>> x(x_last.data(), d_last);
    RowT<R> y(d_last);
    run("channels-last RowMajor, channel_axis -1", -1, x, y, back_from_last, false);
  }
  {  // 4. ThreadPoolDevice, channels-last ColMajor; channel_axis = R - 1
    const ColT<R> x = to_col_major<R>(x_last, d_last);
    ColT<R> y(d_last);
    run("ThreadPoolDevice channels-last ColMajor, channel_axis R-1", R - 1, x, y, back_from_last, true);
  }
}

// ================================================================================================
// Dispatch on rank
// ================================================================================================
void check_case(const OnnxCase& c, Eigen::ThreadPoolDevice& device, Mismatches& m) {
  const std::size_t rank = c.inputs.at(0).dims.size();
  if (c.op == "GroupNormalization" || c.op == "InstanceNormalization") {
    switch (rank) {
      case 3: return check_group_or_instance<3>(c, device, m);
      case 4: return check_group_or_instance<4>(c, device, m);
      case 5: return check_group_or_instance<5>(c, device, m);
      default: break;
    }
  } else if (c.op == "BatchNormalization") {
    switch (rank) {
      case 2: return check_batchnorm<2>(c, device, m);
      case 3: return check_batchnorm<3>(c, device, m);
      case 4: return check_batchnorm<4>(c, device, m);
      case 5: return check_batchnorm<5>(c, device, m);
      default: break;
    }
  } else {
    switch (rank) {
      case 1: return check_layer_or_rms<1>(c, device, m);
      case 2: return check_layer_or_rms<2>(c, device, m);
      case 3: return check_layer_or_rms<3>(c, device, m);
      case 4: return check_layer_or_rms<4>(c, device, m);
      default: break;
    }
  }
  throw std::runtime_error("X of rank " + std::to_string(rank) + " is not supported by this harness");
}

bool is_contract_op(const std::string& op) {
  return op == "LayerNormalization" || op == "RMSNormalization" || op == "BatchNormalization" ||
         op == "GroupNormalization" || op == "InstanceNormalization";
}

}  // namespace

TEST_CASE(
    "ONNX backend node tests: LayerNormalization, RMSNormalization, BatchNormalization, GroupNormalization, "
    "InstanceNormalization",
    "[onnx][conformance]") {
  long declared = -1;
  const std::vector<OnnxCase> cases = read_cases(NORMKIT_ONNX_CASES, declared);
  INFO("cases file: " << NORMKIT_ONNX_CASES);
  CHECK(static_cast<long>(cases.size()) == declared);

  std::size_t expected = 0;  // LN + RMS + BN + GN + IN cases in the file
  for (const OnnxCase& c : cases) expected += is_contract_op(c.op) ? 1u : 0u;

  Eigen::ThreadPool pool(2);
  Eigen::ThreadPoolDevice device(&pool, 2);
  std::size_t passed = 0, failed = 0, skipped = 0;
  std::map<std::string, std::size_t> checked_per_op;
  for (const OnnxCase& c : cases) {
    if (!is_contract_op(c.op)) {
      ++skipped;
      std::cout << "skipped " << c.name << " (" << c.op << " is not in the contract)\n";
      continue;
    }
    Mismatches m;
    try {
      check_case(c, device, m);
    } catch (const std::exception& e) {
      m.messages.push_back(std::string("exception: ") + e.what());
    }
    ++checked_per_op[c.op];
    if (m.messages.empty()) {
      ++passed;
      continue;
    }
    ++failed;  // one line here per failing case; Catch reports every mismatch
    std::cout << "FAILED " << c.name << " (" << c.op << "): " << m.messages.front();
    if (m.messages.size() > 1) std::cout << " (+" << m.messages.size() - 1 << " more)";
    std::cout << "\n";
    for (const std::string& message : m.messages)
      FAIL_CHECK("ONNX case " << c.name << " (" << c.op << "): " << message);
  }

  std::cout << "ONNX conformance: LayerNormalization " << checked_per_op["LayerNormalization"] << ", RMSNormalization "
            << checked_per_op["RMSNormalization"] << ", BatchNormalization " << checked_per_op["BatchNormalization"]
            << ", GroupNormalization " << checked_per_op["GroupNormalization"] << ", InstanceNormalization "
            << checked_per_op["InstanceNormalization"] << " cases checked\n";
  std::cout << passed << " passed, " << failed << " failed, " << skipped << " skipped" << std::endl;

  const std::size_t checked = passed + failed;
  REQUIRE(checked > 0);
  CHECK(checked == expected);
  // The data's README lists 19 LayerNormalization + 19 RMSNormalization + 4 BatchNormalization +
  // 2 GroupNormalization + 2 InstanceNormalization cases.
  CHECK(expected == 46);
  CHECK(skipped == 0);
  CHECK(failed == 0);
}
