// SPDX-License-Identifier: Apache-2.0
// routing.h: the checks-and-params builders of the routing ops, shared by zaya::zaya_router,
// zaya::moe_align and their fusion zaya::zaya_route. Each checks every tensor it is given (messages
// name `op` and the argument) and returns the kernel params; none launches anything.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "../common/params.h"

namespace zk {

// x [T, H] bf16, r_prev [T, R] bf16?, the router's parameters (bf16, balancing_bias [E'] fp32), and
// the outputs weights [T, 1] fp32, ids [T, 1] int32, r_out [T, R] bf16. The variant is chosen (T,
// ZAYA_ROUTER_VARIANT); partials, route_ready and align are left empty.
ZayaRouterParams zaya_router_params(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& r_prev,
                                    const at::Tensor& down_w, const at::Tensor& down_b,
                                    const std::optional<at::Tensor>& eda_scale, const at::Tensor& norm_w,
                                    const at::Tensor& fc1_w, const at::Tensor& fc1_b, const at::Tensor& fc2_w,
                                    const at::Tensor& fc2_b, const at::Tensor& out_w, const at::Tensor& balancing_bias,
                                    double eps, const at::Tensor& weights, const at::Tensor& ids,
                                    const at::Tensor& r_out);

// The router backend's scratch for these params (allocated on x's device; params.partials set), or
// an undefined tensor when it needs none. Keep it alive until the launch is enqueued.
at::Tensor zaya_router_scratch(ZayaRouterParams& params, const at::Tensor& x);

// Slots of sorted_token_ids: every pair plus each expert's padding to a multiple of block_m.
inline int64_t align_capacity(int64_t num_pairs, int64_t num_experts, int64_t block_m) {
  return num_pairs + num_experts * (block_m - 1);
}

// moe_align's size limits (zaya_kernels/ops.py _check_align_sizes says the same): E in
// 1..kAlignMaxExperts, block_m >= 1, and every int32 index of the kernels in range: slots up to the
// capacity plus one block_m (the last block's first row) plus the grid-stride loops' overshoot (every
// thread of the grid, at most kAlignMaxChunks CTAs, past the last slot; kAlignIndexSlack bounds it), and
// pair indices up to T*k plus one chunk. The first two bounds keep the int64 sums below exact. The
// functional forms test this before allocating, so that a huge E or block_m is reported, not allocated.
constexpr int64_t kAlignIndexSlack = int64_t{kAlignPassPairs} * kAlignMaxChunks;
inline bool align_sizes_fit(int64_t num_pairs, int64_t num_experts, int64_t block_m) {
  constexpr int64_t kInt32Max = 2147483647;
  return num_experts >= 1 && num_experts <= kAlignMaxExperts && block_m >= 1 && num_pairs < kInt32Max / 2 &&
         block_m < kInt32Max / 4 &&
         align_capacity(num_pairs, num_experts, block_m) + block_m + kAlignIndexSlack < kInt32Max &&
         num_pairs + align_chunk_pairs(num_pairs, static_cast<int32_t>(num_experts)) < kInt32Max;
}

// The checks behind align_sizes_fit, each with its message (op names the calling op).
void check_align_sizes(const char* op, int64_t num_pairs, int64_t num_experts, int64_t block_m);

// ids [T, k] int32 and the outputs sorted_token_ids [T*k + E*(block_m-1)], block_expert_ids
// [ceil(that / block_m)], expert_offsets [E+1], num_padded [1], all int32. chunk_counts receives the
// [E, chunks] int32 scratch of the chunked path (allocated here when needed); keep it alive until the
// launch is enqueued.
MoeAlignParams moe_align_params(const char* op, const at::Tensor& ids, int64_t num_experts, int64_t block_m,
                                const at::Tensor& sorted_token_ids, const at::Tensor& block_expert_ids,
                                const at::Tensor& expert_offsets, const at::Tensor& num_padded,
                                at::Tensor& chunk_counts);

}  // namespace zk
