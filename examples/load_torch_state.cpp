// examples/load_torch_state.cpp — loading a PyTorch model's normalization state into normkit.
//
// examples/data/torch_state.safetensors was written by scripts/export_torch_state.py: the state_dict
// of a torch.nn.LayerNorm((2, 4)) and of a BatchNorm2d(3) trained three steps with momentum=None,
// an input and PyTorch's eval output for each, and BatchNorm's running statistics after one more
// training step. This program reads the file (safetensors: an 8-byte little-endian header length, a
// JSON header {name: {dtype, shape, data_offsets}}, the raw data), loads the state with
// load_state_dict, and checks normkit's outputs and its next training step against PyTorch's.
//   load_torch_state [path]      (default: the file beside this source, found through the build)
// Exits nonzero when a difference exceeds 1e-5 (float32 rounding is ~1e-7 here).
#include <normkit/normkit.hpp>

#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef NORMKIT_EXAMPLE_DATA
#define NORMKIT_EXAMPLE_DATA "examples/data"
#endif

namespace {

// One tensor of a safetensors file, its values widened to double.
struct Entry {
  std::vector<Eigen::Index> shape;
  std::vector<double> values;
};

// Just enough JSON for a safetensors header: objects, arrays, strings without escapes, integers.
class HeaderParser {
 public:
  explicit HeaderParser(const std::string& text) : s_(text) {}

  // name -> (dtype, shape, [begin, end)) for every tensor; __metadata__ is skipped.
  struct Field {
    std::string dtype;
    std::vector<Eigen::Index> shape;
    std::size_t begin = 0, end = 0;
  };
  std::map<std::string, Field> parse() {
    std::map<std::string, Field> fields;
    expect('{');
    while (!peek('}')) {
      const std::string name = string();
      expect(':');
      if (name == "__metadata__") skip_value();
      else fields[name] = field();
      if (!peek('}')) expect(',');
    }
    return fields;
  }

 private:
  Field field() {
    Field f;
    expect('{');
    while (!peek('}')) {
      const std::string key = string();
      expect(':');
      if (key == "dtype") f.dtype = string();
      else if (key == "shape") f.shape = integers();
      else if (key == "data_offsets") {
        const auto o = integers();
        if (o.size() != 2) throw std::runtime_error("data_offsets must have two entries");
        f.begin = static_cast<std::size_t>(o[0]), f.end = static_cast<std::size_t>(o[1]);
      } else skip_value();
      if (!peek('}')) expect(',');
    }
    expect('}');
    return f;
  }
  std::vector<Eigen::Index> integers() {
    std::vector<Eigen::Index> v;
    expect('[');
    while (!peek(']')) {
      v.push_back(integer());
      if (!peek(']')) expect(',');
    }
    expect(']');
    return v;
  }
  Eigen::Index integer() {
    space();
    std::size_t used = 0;
    const long long v = std::stoll(s_.substr(i_), &used);
    i_ += used;
    return static_cast<Eigen::Index>(v);
  }
  std::string string() {
    expect('"');
    const std::size_t end = s_.find('"', i_);
    if (end == std::string::npos) throw std::runtime_error("unterminated string in the header");
    std::string v = s_.substr(i_, end - i_);
    i_ = end + 1;
    return v;
  }
  void skip_value() {  // a string, a number, or a nested object/array (the metadata)
    space();
    if (s_[i_] == '"') {
      string();
      return;
    }
    if (s_[i_] != '{' && s_[i_] != '[') {
      while (i_ < s_.size() && s_[i_] != ',' && s_[i_] != '}' && s_[i_] != ']') ++i_;
      return;
    }
    int depth = 0;
    do {
      if (s_[i_] == '"') {
        string();
        continue;
      }
      depth += (s_[i_] == '{' || s_[i_] == '[') - (s_[i_] == '}' || s_[i_] == ']');
      ++i_;
    } while (depth > 0 && i_ < s_.size());
  }
  void space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool peek(char c) {  // without consuming it
    space();
    return i_ < s_.size() && s_[i_] == c;
  }
  void expect(char c) {
    space();
    if (i_ >= s_.size() || s_[i_] != c)
      throw std::runtime_error(std::string("safetensors header: expected '") + c + "'");
    ++i_;
  }

  const std::string& s_;
  std::size_t i_ = 0;
};

std::map<std::string, Entry> read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  const std::vector<unsigned char> file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (file.size() < 8) throw std::runtime_error(path + ": too short");
  std::uint64_t header_size = 0;
  for (int b = 7; b >= 0; --b) header_size = header_size << 8 | file[static_cast<std::size_t>(b)];
  if (header_size > file.size() - 8) throw std::runtime_error(path + ": header larger than the file");
  const std::string header(file.begin() + 8, file.begin() + 8 + static_cast<std::ptrdiff_t>(header_size));
  const unsigned char* data = file.data() + 8 + header_size;
  const std::size_t data_size = file.size() - 8 - header_size;

  std::map<std::string, Entry> out;
  for (const auto& [name, f] : HeaderParser(header).parse()) {
    if (f.end > data_size || f.begin > f.end) throw std::runtime_error(name + ": data_offsets outside the file");
    const std::size_t width = f.dtype == "F32" ? 4 : (f.dtype == "F64" || f.dtype == "I64") ? 8 : 0;
    if (!width) throw std::runtime_error(name + ": dtype " + f.dtype + " is not handled here");
    Entry e{f.shape, {}};
    for (std::size_t at = f.begin; at + width <= f.end; at += width) {  // little-endian, as the format says
      std::uint64_t bits = 0;
      for (std::size_t b = width; b-- > 0;) bits = bits << 8 | data[at + b];
      if (f.dtype == "F32") {
        float v;
        const auto b32 = static_cast<std::uint32_t>(bits);
        std::memcpy(&v, &b32, 4);
        e.values.push_back(v);
      } else if (f.dtype == "F64") {
        double v;
        std::memcpy(&v, &bits, 8);
        e.values.push_back(v);
      } else {
        e.values.push_back(static_cast<double>(static_cast<std::int64_t>(bits)));
      }
    }
    out[name] = std::move(e);
  }
  return out;
}

Eigen::Tensor<float, 1> flat(const Entry& e) {
  Eigen::Tensor<float, 1> t(static_cast<Eigen::Index>(e.values.size()));
  for (Eigen::Index i = 0; i < t.size(); ++i) t(i) = static_cast<float>(e.values[static_cast<std::size_t>(i)]);
  return t;
}

// The entries named "<prefix>.<key>" for `keys`, as a normkit StateDict (num_batches_tracked apart).
normkit::StateDict<float> state_with_prefix(const std::map<std::string, Entry>& file, const std::string& prefix) {
  normkit::StateDict<float> s;
  for (const auto& [name, e] : file) {
    if (name.rfind(prefix + ".", 0) != 0) continue;
    const std::string key = name.substr(prefix.size() + 1);
    if (key == "num_batches_tracked") s.num_batches_tracked = static_cast<std::int64_t>(e.values.at(0));
    else if (key == "weight" || key == "bias" || key == "running_mean" || key == "running_var")
      s.tensors[key] = flat(e);
  }
  return s;
}

template <int R>
Eigen::Tensor<float, R, Eigen::RowMajor> tensor(const Entry& e) {  // PyTorch's contiguous = RowMajor
  if (e.shape.size() != R) throw std::runtime_error("unexpected rank");
  std::array<Eigen::Index, static_cast<std::size_t>(R)> dims;
  for (int i = 0; i < R; ++i) dims[static_cast<std::size_t>(i)] = e.shape[static_cast<std::size_t>(i)];
  Eigen::Tensor<float, R, Eigen::RowMajor> t(dims);
  for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<float>(e.values[static_cast<std::size_t>(i)]);
  return t;
}

double max_diff(const float* a, const std::vector<double>& b) {
  double d = 0;
  for (std::size_t i = 0; i < b.size(); ++i) d = std::max(d, std::abs(static_cast<double>(a[i]) - b[i]));
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : std::string(NORMKIT_EXAMPLE_DATA) + "/torch_state.safetensors";
  const auto file = read_safetensors(path);
  std::printf("read %zu tensors from %s\n", file.size(), path.c_str());

  normkit::LayerNorm<float> ln({2, 4});
  ln.load_state_dict(state_with_prefix(file, "ln"));
  const auto ln_y = ln(tensor<3>(file.at("ln.input")));
  const double ln_err = max_diff(ln_y.data(), file.at("ln.output").values);

  normkit::BatchNormOptions o;
  o.momentum = std::nullopt;  // as the exported BatchNorm2d(3, momentum=None)
  normkit::BatchNorm<float> bn(3, o);
  bn.load_state_dict(state_with_prefix(file, "bn"));
  bn.eval();
  const auto bn_y = bn(tensor<4>(file.at("bn.input")));
  const double bn_err = max_diff(bn_y.data(), file.at("bn.output").values);
  const long long loaded_count = bn.num_batches_tracked();
  bn.train();
  (void)bn(tensor<4>(file.at("bn.train_input")));
  const double mean_err = max_diff(bn.running_mean().data(), file.at("bn.running_mean_after").values);
  const double var_err = max_diff(bn.running_var().data(), file.at("bn.running_var_after").values);

  std::printf("LayerNorm((2, 4)) eval output vs PyTorch: max |diff| %.3g\n", ln_err);
  std::printf("BatchNorm2d(3) eval output vs PyTorch: max |diff| %.3g (num_batches_tracked %lld)\n", bn_err,
              loaded_count);
  std::printf("BatchNorm2d(3) after one more training step: running_mean %.3g, running_var %.3g\n", mean_err, var_err);
  const bool ok = ln_err <= 1e-5 && bn_err <= 1e-5 && mean_err <= 1e-5 && var_err <= 1e-5;
  std::printf("%s\n", ok ? "load_torch_state: matches PyTorch" : "load_torch_state: MISMATCH");
  return ok ? 0 : 1;
}
