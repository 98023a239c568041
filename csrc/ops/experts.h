// SPDX-License-Identifier: Apache-2.0
// experts.h: what the experts launchers (grouped_gemm.cpp, moe_mlp.cpp) share: the regime override and
// the row checks of their 16-byte vector accesses.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../common/params.h"
#include "checks.h"

namespace zk {

// ZAYA_EXPERTS_REGIME=small|tiled forces a regime (tests run both at every shape, benchmarks measure the
// crossover); unset or empty: by shape (the backend's launch_* decides).
inline ExpertsRegime experts_regime_from_env(const char* op) {
  const char* forced = std::getenv("ZAYA_EXPERTS_REGIME");
  if (forced == nullptr || forced[0] == '\0') return ExpertsRegime::kAuto;
  if (std::strcmp(forced, "small") == 0) return ExpertsRegime::kSmall;
  if (std::strcmp(forced, "tiled") == 0) return ExpertsRegime::kTiled;
  ZK_CHECK(false, op, ": ZAYA_EXPERTS_REGIME must be small, tiled or unset, got '", forced, "'");
  return ExpertsRegime::kAuto;
}

// A [rows, C] bf16 operand read or written in 16-byte pieces: contiguous last dimension, row stride a
// multiple of 8 elements, 16-byte aligned start.
inline void check_vector_rows(const char* op, const char* name, const at::Tensor& t) {
  check_last_dim_contiguous(op, name, t);
  ZK_CHECK(t.size(0) <= 1 || t.stride(0) % 8 == 0, op, ": ", name,
           " rows must be 16-byte aligned (row stride a multiple of 8 elements), got strides ",
           shape_str(t.strides()));
  ZK_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, op, ": ", name,
           " must start on a 16-byte boundary, got address ", t.data_ptr());
}

// ops.py's _expect: device, then rank, dtype and shape, each message naming the argument.
inline void expect_tensor(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like,
                          int64_t dim, at::ScalarType dtype) {
  check_same_device(op, name, t, like);
  if (dim >= 0) check_dim(op, name, t, dim);
  check_dtype(op, name, t, dtype);
}

}  // namespace zk
