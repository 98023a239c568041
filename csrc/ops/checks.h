// SPDX-License-Identifier: Apache-2.0
// checks.h: argument checks shared by the host launchers. Every message names the op, the
// argument, what was expected and what came.
#pragma once

#include <torch/library.h>

#include <string>
#include <vector>

namespace zk {

inline std::string shape_str(at::IntArrayRef sizes) { return c10::str(sizes); }

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(), ", got ", t.device());
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t, at::ScalarType want) {
  TORCH_CHECK(t.scalar_type() == want, op, ": ", name, " must be ", want, ", got ", t.scalar_type());
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t, std::vector<int64_t> want) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(want), op, ": ", name, " must have shape ", shape_str(want), ", got ",
              shape_str(t.sizes()));
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got shape ", shape_str(t.sizes()));
}

inline void check_contiguous(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", shape_str(t.strides()));
}

inline void check_last_dim_contiguous(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", name,
              " must have a contiguous last dimension, got strides ", shape_str(t.strides()));
}

inline void check_launch(const char* op, const char* error) {
  TORCH_CHECK(error == nullptr, op, ": kernel launch failed: ", error);
}

}  // namespace zk
