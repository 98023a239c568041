// SPDX-License-Identifier: Apache-2.0
// checks.h: argument checks shared by the host launchers. Every message names the op, the
// argument, what was expected and what came.
//
// NOTE: messages are assembled here with std::to_string / snprintf, never with std::ostream number
// formatting (c10::str, operator<< on integers or IntArrayRef). On the H200 image an extension built
// there crashed inside std::ostream::_M_insert<long> whenever a TORCH_CHECK message formatted an
// integer (its libstdc++ headers and the runtime library the Python process loads disagree on the
// numeric facets); a single std::string message reaches TORCH_CHECK without any ostream.
#pragma once

#include <torch/library.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

namespace zk {

inline std::string to_text(const char* s) { return s; }
inline std::string to_text(const std::string& s) { return s; }
// The Python spelling, as the CPU kernels' checks in zaya_kernels/ops.py print it.
inline std::string to_text(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kHalf: return "torch.float16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kByte: return "torch.uint8";
    default: return std::string("torch.") + c10::toString(t);
  }
}
inline std::string to_text(const c10::Device& d) { return d.str(); }
inline std::string to_text(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%p", p);
  return buf;
}
template <typename T, std::enable_if_t<std::is_arithmetic_v<T>, int> = 0>
std::string to_text(T v) {
  return std::to_string(v);
}
inline std::string to_text(at::IntArrayRef values) {
  std::string out = "(";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out + (values.size() == 1 ? ",)" : ")");
}
inline std::string to_text(const std::vector<int64_t>& values) { return to_text(at::IntArrayRef(values)); }

template <typename... Args>
std::string message(const Args&... args) {
  std::string out;
  ((out += to_text(args)), ...);
  return out;
}

// TORCH_CHECK with a message built by zk::message (see the NOTE above).
#define ZK_CHECK(cond, ...) TORCH_CHECK(cond, ::zk::message(__VA_ARGS__))

inline std::string shape_str(at::IntArrayRef sizes) { return to_text(sizes); }

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  ZK_CHECK(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(), ", got ", t.device());
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t, at::ScalarType want) {
  ZK_CHECK(t.scalar_type() == want, op, ": ", name, " must be ", want, ", got ", t.scalar_type());
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t, std::vector<int64_t> want) {
  ZK_CHECK(t.sizes() == at::IntArrayRef(want), op, ": ", name, " must have shape ", shape_str(want), ", got ",
              shape_str(t.sizes()));
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim) {
  ZK_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got shape ", shape_str(t.sizes()));
}

inline void check_contiguous(const char* op, const char* name, const at::Tensor& t) {
  ZK_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", shape_str(t.strides()));
}

inline void check_last_dim_contiguous(const char* op, const char* name, const at::Tensor& t) {
  ZK_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", name,
              " must have a contiguous last dimension, got strides ", shape_str(t.strides()));
}

// A float scalar argument that must be a finite number > 0 (eps, rope_theta, softmax_scale); NaN fails.
inline void check_finite_positive(const char* op, const char* name, double value) {
  ZK_CHECK(std::isfinite(value) && value > 0, op, ": ", name, " must be a finite number > 0, got ", value);
}

inline void check_launch(const char* op, const char* error) {
  ZK_CHECK(error == nullptr, op, ": kernel launch failed: ", error);
}

}  // namespace zk
