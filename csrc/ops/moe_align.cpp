// SPDX-License-Identifier: Apache-2.0
// Host launcher of zaya::moe_align: check tensors, fill MoeAlignParams, launch on the current stream.
// Backend-neutral (hipify maps the c10::cuda calls on ROCm). No host sync: every size is static.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../common/launch.h"
#include "checks.h"
#include "routing.h"

namespace zk {
namespace {

constexpr const char* kOp = "zaya::moe_align";

}  // namespace

void check_align_sizes(const char* op, int64_t num_pairs, int64_t num_experts, int64_t block_m) {
  ZK_CHECK(num_experts >= 1 && num_experts <= kAlignMaxExperts, op, ": num_experts must be in 1..",
           kAlignMaxExperts, ", got ", num_experts);
  ZK_CHECK(block_m >= 1, op, ": block_m must be >= 1, got ", block_m);
  ZK_CHECK(align_sizes_fit(num_pairs, num_experts, block_m), op, ": T*k + E*(block_m-1) must fit int32, got T*k=",
           num_pairs, ", E=", num_experts, ", block_m=", block_m);
}

MoeAlignParams moe_align_params(const char* op, const at::Tensor& ids, int64_t num_experts, int64_t block_m,
                                const at::Tensor& sorted_token_ids, const at::Tensor& block_expert_ids,
                                const at::Tensor& expert_offsets, const at::Tensor& num_padded,
                                at::Tensor& chunk_counts) {
  check_dim(op, "ids", ids, 2);
  check_dtype(op, "ids", ids, at::kInt);
  check_last_dim_contiguous(op, "ids", ids);
  const int64_t num_tokens = ids.size(0);
  const int64_t num_pairs = ids.numel();
  check_align_sizes(op, num_pairs, num_experts, block_m);
  const int64_t capacity = align_capacity(num_pairs, num_experts, block_m);
  const int64_t num_blocks = (capacity + block_m - 1) / block_m;
  check_same_device(op, "sorted_token_ids", sorted_token_ids, ids);
  check_dtype(op, "sorted_token_ids", sorted_token_ids, at::kInt);
  check_shape(op, "sorted_token_ids", sorted_token_ids, {capacity});
  check_contiguous(op, "sorted_token_ids", sorted_token_ids);
  check_same_device(op, "block_expert_ids", block_expert_ids, ids);
  check_dtype(op, "block_expert_ids", block_expert_ids, at::kInt);
  check_shape(op, "block_expert_ids", block_expert_ids, {num_blocks});
  check_contiguous(op, "block_expert_ids", block_expert_ids);
  check_same_device(op, "expert_offsets", expert_offsets, ids);
  check_dtype(op, "expert_offsets", expert_offsets, at::kInt);
  check_shape(op, "expert_offsets", expert_offsets, {num_experts + 1});
  check_contiguous(op, "expert_offsets", expert_offsets);
  check_same_device(op, "num_padded", num_padded, ids);
  check_dtype(op, "num_padded", num_padded, at::kInt);
  check_shape(op, "num_padded", num_padded, {1});

  // One CTA per chunk (params.h align_chunk_pairs): one chunk up to align_one_cta_max_pairs(E) pairs
  // (4096 for E <= 64), else chunks of 1024 pairs (or whole multiples, at most align_max_chunks(E)
  // of them). The chunked path needs the [E, num_chunks] int32 chunk totals that its counting launch
  // writes and its sorting launch reads: at most kAlignMaxChunkCounts entries (32 KB).
  const int64_t chunk_pairs = align_chunk_pairs(num_pairs, static_cast<int32_t>(num_experts));
  const int64_t num_chunks = align_num_chunks(num_pairs, static_cast<int32_t>(num_experts));
  if (num_chunks > 1) chunk_counts = at::empty({num_experts, num_chunks}, ids.options());

  MoeAlignParams params{};
  params.ids = ids.data_ptr<int32_t>();
  params.ids_row_stride = ids.stride(0);
  params.sorted_token_ids = sorted_token_ids.data_ptr<int32_t>();
  params.block_expert_ids = block_expert_ids.data_ptr<int32_t>();
  params.expert_offsets = expert_offsets.data_ptr<int32_t>();
  params.num_padded = num_padded.data_ptr<int32_t>();
  params.chunk_counts = num_chunks > 1 ? chunk_counts.data_ptr<int32_t>() : nullptr;
  params.num_tokens = static_cast<int32_t>(num_tokens);
  params.k = static_cast<int32_t>(ids.size(1));
  params.num_experts = static_cast<int32_t>(num_experts);
  params.block_m = static_cast<int32_t>(block_m);
  params.capacity = static_cast<int32_t>(capacity);
  params.num_blocks = static_cast<int32_t>(num_blocks);
  params.chunk_pairs = static_cast<int32_t>(chunk_pairs);
  params.num_chunks = static_cast<int32_t>(num_chunks);
  return params;
}

namespace {

void moe_align_out(const at::Tensor& ids,  // [T, k] int32
                   int64_t num_experts, int64_t block_m,
                   at::Tensor& sorted_token_ids,  // [T*k + E*(block_m-1)] int32
                   at::Tensor& block_expert_ids,  // [ceil(capacity / block_m)] int32
                   at::Tensor& expert_offsets,    // [E+1] int32
                   at::Tensor& num_padded) {      // [1] int32
  const c10::cuda::CUDAGuard device_guard(ids.device());
  at::Tensor chunk_counts;
  const MoeAlignParams params = moe_align_params(kOp, ids, num_experts, block_m, sorted_token_ids, block_expert_ids,
                                                 expert_offsets, num_padded, chunk_counts);
  check_launch(kOp, launch_moe_align(params, c10::cuda::getCurrentCUDAStream().stream()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe_align(const at::Tensor& ids, int64_t num_experts,
                                                                     int64_t block_m) {
  // Sizes for the allocation only: a bad argument is reported by the out form's checks, into empty
  // outputs, so that a huge num_experts or block_m never reaches the allocator.
  const bool fits = align_sizes_fit(ids.numel(), num_experts, block_m);
  const int64_t experts = fits ? num_experts : 0;
  const int64_t bm = fits ? block_m : 1;
  const int64_t capacity = fits ? align_capacity(ids.numel(), experts, bm) : 0;
  const auto options = ids.options().dtype(at::kInt);
  at::Tensor sorted_token_ids = at::empty({capacity}, options);
  at::Tensor block_expert_ids = at::empty({(capacity + bm - 1) / bm}, options);
  at::Tensor expert_offsets = at::empty({fits ? experts + 1 : 0}, options);
  at::Tensor num_padded = at::empty({1}, options);
  moe_align_out(ids, num_experts, block_m, sorted_token_ids, block_expert_ids, expert_offsets, num_padded);
  return {sorted_token_ids, block_expert_ids, expert_offsets, num_padded};
}

}  // namespace

TORCH_LIBRARY_IMPL(zaya, CUDA, m) {
  m.impl("moe_align", &moe_align);
  m.impl("moe_align.out", &moe_align_out);
}

}  // namespace zk
