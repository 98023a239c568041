// SPDX-License-Identifier: Apache-2.0
// attention_decode_plan.cuh: how attention_decode cuts the keys into splits, host-callable (the launcher calls
// it; tests/test_attention_cpu.py compiles it with g++). No CUDA/HIP spelling.
//
// The launcher cannot read seq_lens (no host sync), so the plan is made for the block table's capacity
// max_pages * page_size, the most keys a sequence can have; splits past a sequence's length exit at once.
// Aim: about kDecodeTargetCtasPerSm work units per SM over the B * Hkv (sequence, KV head) pairs, so that one
// long sequence (B = 1: two pairs) still spreads over every SM, while a large batch keeps few splits (little
// combine traffic: each split writes Hkv * 4 * (128 + 2) fp32 per sequence). Splits hold at least
// kDecodeMinSplitKeys keys (two 32-key steps of the 128-thread CTA: below that the fixed cost of a CTA, the
// q load and the in-CTA merge, outweighs its share of the reads).
//   H200 (132 SMs): B = 1, L = 32768 -> 256 splits of 128 keys (512 CTAs); B = 1, L = 4096 -> 64 of 64;
//   B = 32, L = 32768 -> 9 of 3648; B = 128, L = 8192 -> 3 of 2752.
#pragma once

#include <stdint.h>

#include "params.h"

// Host code (the launchers, the CPU tests) compiles this without a device compiler.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define ZK_DECODE_FN __host__ __device__ inline
#else
#define ZK_DECODE_FN inline
#endif

namespace zk {

constexpr int kDecodeTargetCtasPerSm = 4;
constexpr int kDecodeMinSplitKeys = 2 * kDecodeKeyStep;

struct DecodeSplitPlan {
  int32_t num_splits;
  int32_t split_keys;
};

ZK_DECODE_FN int64_t decode_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// capacity = max_pages * page_size (>= 0), pairs = B * Hkv (>= 1), num_sms >= 1.
ZK_DECODE_FN DecodeSplitPlan decode_split_plan(int64_t capacity, int64_t pairs, int num_sms) {
  const int64_t max_splits = capacity < kDecodeMinSplitKeys ? 1 : capacity / kDecodeMinSplitKeys;
  int64_t splits = decode_ceil_div(static_cast<int64_t>(kDecodeTargetCtasPerSm) * num_sms, pairs);
  if (splits > max_splits) splits = max_splits;
  if (splits < 1) splits = 1;
  int64_t keys = decode_ceil_div(capacity, splits);
  keys = decode_ceil_div(keys, kDecodeKeyStep) * kDecodeKeyStep;
  if (keys < kDecodeKeyStep) keys = kDecodeKeyStep;
  splits = decode_ceil_div(capacity, keys);
  if (splits < 1) splits = 1;
  return DecodeSplitPlan{static_cast<int32_t>(splits), static_cast<int32_t>(keys)};
}

}  // namespace zk
