// SPDX-License-Identifier: Apache-2.0
// params.h: the seam between host launchers (csrc/ops, which see at::Tensor) and kernels (which
// never do). Plain structs of pointers, strides and sizes; no torch, CUDA or HIP headers, so this
// file compiles in every translation unit of every backend.
#pragma once

#include <stdint.h>

namespace zk {

enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1 };

// topk_gating: softmax over E' logits per row, choose the k largest (p + bias), lower index first
// on ties, return the unbiased p of the chosen ids.
struct TopkGatingParams {
  const void* logits;        // [T, E'] bf16 | fp32, last dim contiguous
  DType logits_dtype;
  int64_t logits_row_stride;  // elements
  const float* bias;         // [E'] fp32, or nullptr
  float* weights;            // [T, k] fp32
  int64_t weights_row_stride;
  int32_t* ids;              // [T, k] int32
  int64_t ids_row_stride;
  int64_t num_tokens;        // T
  int32_t num_experts;       // E' (experts + optional skip route), 1..kTopkMaxExperts
  int32_t k;                 // 1..kTopkMaxK, k <= E'
  int32_t skip_index;        // -1: none; else the MOD route (slots after it are forced to it)
  bool renormalize;
};

constexpr int kTopkMaxExperts = 256;
constexpr int kTopkMaxK = 8;

}  // namespace zk
