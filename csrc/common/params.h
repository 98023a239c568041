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

// moe_align: counting sort of the T*k (token, slot) pairs by expert, each expert's segment padded to
// block_m (the contract of zaya::moe_align, mirrored by reference.moe_align). Pairs of one expert keep
// ascending pair order; ids outside [0, E) belong to no expert. Every output element is written.
struct MoeAlignParams {
  const int32_t* ids;          // [T, k] int32, last dim contiguous
  int64_t ids_row_stride;      // elements between token rows of ids
  int32_t* sorted_token_ids;   // [capacity] int32: pair index t*k + j, padding = T*k
  int32_t* block_expert_ids;   // [num_blocks] int32: expert of each block_m rows, -1 past num_padded
  int32_t* expert_offsets;     // [E + 1] int32: padded segment starts, offsets[E] = num_padded
  int32_t* num_padded;         // [1] int32
  int32_t* chunk_counts;       // [E, num_chunks] int32 workspace (expert-major) when num_chunks > 1, else nullptr
  int32_t num_tokens;          // T
  int32_t k;                   // slots per token
  int32_t num_experts;         // E, 1..kAlignMaxExperts
  int32_t block_m;             // >= 1
  int32_t capacity;            // T*k + E*(block_m - 1), fits int32 (the launcher checks)
  int32_t num_blocks;          // ceil(capacity / block_m)
  int32_t chunk_pairs;         // align_chunk_pairs(T*k, E): pairs per chunk, one CTA per chunk
  int32_t num_chunks;          // ceil(T*k / chunk_pairs), >= 1 (1 for T = 0 too)
};

// 256 covers every released MoE router (DeepSeek-V3: 256, Qwen3: 128, ZAYA1: 16).
constexpr int kAlignMaxExperts = 256;

// How moe_align cuts the pairs (moe_align.cuh has the kernels and the cost model behind the numbers):
//   * T*k <= align_one_cta_max_pairs(E): one launch of one CTA that sorts everything (no workspace). 4096
//     pairs for E <= 64 (ZAYA1 decode and prefill up to T = 4096 at k = 1): its 256 threads walk at most
//     16 steps, ~1 us of warp work on one SM, less than the second launch (~2.5 us) of the chunked path.
//     2048 / 1024 pairs for E <= 128 / 256, where a step costs ~2x / ~4x more (4 / 8 experts per lane).
//   * above it: chunks of align_chunk_pairs(T*k, E) pairs, a counting launch (one CTA per chunk writes
//     chunk_counts[e][chunk]) then a sorting launch (one CTA per chunk). A chunk is kAlignPassPairs (256
//     threads x 4 steps) while that gives at most align_max_chunks(E) chunks (T*k = 65536, k = 1: 64 CTAs
//     of 132 SMs, ~0.25 us of warp work each), else whole multiples of it walked in passes: each sorting
//     CTA reads num_chunks x E entries of chunk_counts, which this keeps at most kAlignMaxChunkCounts.
constexpr int kAlignPassPairs = 1024;
constexpr int kAlignMaxChunks = 128;
constexpr int kAlignMaxChunkCounts = 8192;

constexpr int32_t align_one_cta_max_pairs(int32_t num_experts) {
  return num_experts <= 64 ? 4096 : num_experts <= 128 ? 2048 : 1024;
}

constexpr int64_t align_max_chunks(int32_t num_experts) {
  return kAlignMaxChunkCounts / num_experts < kAlignMaxChunks ? kAlignMaxChunkCounts / num_experts : kAlignMaxChunks;
}

// Pairs per chunk for num_pairs pairs and E = num_experts in 1..kAlignMaxExperts (host launchers only).
constexpr int64_t align_chunk_pairs(int64_t num_pairs, int32_t num_experts) {
  if (num_pairs <= align_one_cta_max_pairs(num_experts)) return align_one_cta_max_pairs(num_experts);
  const int64_t per_pass_max = kAlignPassPairs * align_max_chunks(num_experts);
  return (num_pairs + per_pass_max - 1) / per_pass_max * kAlignPassPairs;
}

constexpr int64_t align_num_chunks(int64_t num_pairs, int32_t num_experts) {
  return num_pairs <= 0 ? 1 : (num_pairs + align_chunk_pairs(num_pairs, num_experts) - 1) /
                                  align_chunk_pairs(num_pairs, num_experts);
}

// zaya_router: the whole ZAYA1 router (ZAYA1_ARCHITECTURE.md §5.1-5.2) with the numerics of
// reference.zaya_router: fp32 accumulation; r fp32 into the RMSNorm and rounded to bf16 only when
// stored; n, h1, h2 rounded to bf16 as the MLP's matmul inputs; exact-erf GELU; fp32 softmax over the
// E' routes; top-1 of (p + balancing_bias), the lower index winning ties; weight = unbiased p.
enum class ZayaRouterVariant : int32_t {
  // T <= kRouterClusterMaxTokens: one cluster of kRouterClusterSize CTAs per group of 16 or 32
  // tokens (32 only when forced past one wave of 16-token groups, or where few clusters fit), the
  // down-projection split over K across the cluster, partial sums and the 256-wide rows pushed
  // through distributed shared memory (st.async; mma.sync). Spreads
  // W_down's 1 MB over 8 SMs per group, in one launch and without a workspace: the decode path.
  kCluster = 0,
  // T > kRouterSplitMaxTokens: persistent CTA pairs, each CTA 128 tokens x all 256 outputs (wgmma),
  // every weight tile TMA-multicast to both CTAs of the pair, the MLP fused on the register-resident rows.
  kTile = 1,
  // kRouterClusterMaxTokens < T <= kRouterSplitMaxTokens: two kernels. The down-projection split over K
  // into kRouterSplitK slices, each CTA (64 tokens x 128 columns, wgmma) writing its fp32 partial sums
  // to `partials` (through L2, whose bandwidth the cluster variant's DSMEM exchange lacks at these sizes); then
  // clusters of 4 (or 2) CTAs per 16, 32 or 48 tokens, each CTA a quarter (or half) of the 256 columns,
  // exchanging row sums, n, h1 and partial logits by st.async pushes into each other's shared memory.
  kSplit = 2,
};

// The split variant's token groups: kAuto takes the smallest whose clusters surely fit on the GPU at
// once (16 tokens in clusters of 4 at two CTAs per SM, then 16 in clusters of 2 at one, then 16 in the
// compact form at three, then 32, then 48); the others are forced
// (ZAYA_ROUTER_VARIANT=split16|split16p|split16c|split32|split48), so that tests run every shape
// whatever the GPU's size picks.
enum class SplitGroup : int32_t { kAuto = 0, k16 = 1, k16Compact = 2, k32 = 3, k48 = 4, k16Pair = 5 };

struct ZayaRouterParams {
  const uint16_t* x;            // [T, H] bf16 bits, row stride x_row_stride (16-byte aligned rows)
  int64_t x_row_stride;         // elements
  const uint16_t* r_prev;       // [T, R] bf16, row stride r_prev_row_stride; nullptr: first MoE layer
  int64_t r_prev_row_stride;
  const uint16_t* down_w;       // [R, H] bf16, contiguous
  const uint16_t* down_b;       // [R] bf16
  const uint16_t* eda_scale;    // [R] bf16, or nullptr (then r_prev is nullptr too)
  const uint16_t* norm_w;       // [R] bf16
  const uint16_t* fc1_w;        // [R, R] bf16, contiguous
  const uint16_t* fc1_b;        // [R] bf16
  const uint16_t* fc2_w;        // [R, R] bf16, contiguous
  const uint16_t* fc2_b;        // [R] bf16
  const uint16_t* out_w;        // [E', R] bf16, contiguous
  const float* balancing_bias;  // [E'] fp32
  float* weights;               // [T, 1] fp32, row stride weights_row_stride
  int64_t weights_row_stride;
  int32_t* ids;                 // [T, 1] int32, row stride ids_row_stride
  int64_t ids_row_stride;
  uint16_t* r_out;              // [T, R] bf16, row stride r_out_row_stride
  int64_t r_out_row_stride;
  int64_t num_tokens;           // T >= 1
  int32_t hidden;               // H: a multiple of kRouterHiddenStep, at most kRouterMaxHidden
  int32_t num_routes;           // E' = experts + skip route, 2..kRouterMaxRoutes; the skip route is E' - 1
  float eps;                    // RMSNorm epsilon
  ZayaRouterVariant variant;
  SplitGroup split_group;       // kSplit only
  float* partials;              // kSplit: [kRouterSplitK, T, R] fp32 workspace
                                //   (zaya_router_workspace_bytes, launch.h), else nullptr
  // zaya_route (the router with moe_align fused in, launch_zaya_route): `align` sorts the router's ids
  // (align.ids = ids). Where the router's kernel runs the align itself (kRouteFusedMaxTokens), each
  // token's route + 1 is also stored into route_ready[t], bytes of the caller's workspace that are
  // zero between calls; one CTA waits for all T of them, sorts them and zeroes them again.
  uint8_t* route_ready;         // [kRouteWorkspaceBytes] uint8, or nullptr (zaya_router alone)
  MoeAlignParams align;
};

constexpr int kRouterWidth = 256;        // R: every kernel holds one full 256-wide row per token
constexpr int kRouterMaxRoutes = 32;     // E' <= 32: the logits are one 32-column MMA tile
constexpr int kRouterHiddenStep = 512;   // H splits into 8 cluster slices of whole 64-wide TMA boxes
constexpr int kRouterMaxHidden = 2048;   // ZAYA1's H; the cluster variant's shared memory is sized for it
constexpr int kRouterClusterSize = 8;    // portable cluster size; 15 clusters of 8 fit the 132-SM H200 at once
constexpr int kRouterSplitK = 4;         // K slices of the split variant's down-projection (H / 4 each)
// Crossovers between the variants (bench/results/h200/route.json, rows zaya_cluster / zaya_split /
// zaya_tile; H200). Cluster -> split above 128 tokens: the cluster variant needs no workspace (the
// decode step allocates nothing) and is the faster one there (T = 128: 8.0 vs 8.7 us); above it its
// DSMEM reduce-scatter of fp32 partials (7 KB per token) and its 16-token groups in waves of 15
// clusters grow with T (T = 256: cluster 11.7 us, split 9.4 us). Split -> tile above 1024 tokens
// (T = 4096: split 49.1 us, tile 46.4 us).
constexpr int64_t kRouterClusterMaxTokens = 128;
constexpr int64_t kRouterSplitMaxTokens = 1024;

// zaya_route: up to this many tokens (the cluster and split variants' range) the router's last kernel
// runs moe_align itself, one byte of the workspace per token; above it (the tile variant) moe_align
// is its own launch. The workspace (zaya_kernels.route_workspace) is this many zero bytes.
constexpr int64_t kRouteFusedMaxTokens = kRouterSplitMaxTokens;
constexpr int64_t kRouteWorkspaceBytes = kRouteFusedMaxTokens;

// ---- experts (grouped_gemm, moe_mlp): params below this line, owned by the experts kernels ----

// Which kernels run an experts op. kAuto: by shape (csrc/cuda/experts_sm90.cu has the heuristic and its
// numbers); the host launchers set kSmall / kTiled from ZAYA_EXPERTS_REGIME=small|tiled (tests, benchmarks).
//   kSmall: the weight-bandwidth-bound decode regime (swap-AB mma.sync, every SM streaming weight rows).
//   kTiled: the tensor-core-bound regime (persistent wgmma/TMA tiles).
enum class ExpertsRegime : int32_t { kAuto = 0, kSmall = 1, kTiled = 2 };

// grouped_gemm: c[rows of expert e] = a[rows of expert e] @ w[e]^T for the row segments
// [expert_offsets[e], expert_offsets[e+1]); rows outside every segment are written as zero.
// The offsets live on the device (no host sync): kernels read them and derive each tile's expert.
struct GroupedGemmParams {
  const uint16_t* a;               // [M, K] bf16 bits, row stride a_row_stride, 16-byte aligned rows
  int64_t a_row_stride;            // elements
  const uint16_t* w;               // [E, N, K] bf16 bits, contiguous (nn.Linear layout: [out, in])
  const int32_t* expert_offsets;   // [E + 1] int32, non-decreasing, offsets[0] >= 0, offsets[E] <= M
  uint16_t* c;                     // [M, N] bf16 bits, row stride c_row_stride
  int64_t c_row_stride;            // elements
  int32_t m;                       // M rows of a and c
  int32_t n;                       // N outputs per expert
  int32_t k;                       // K, the reduction length
  int32_t num_experts;             // E >= 1
  void* workspace;                 // launcher-allocated scratch (grouped_gemm_workspace_bytes), or nullptr
  ExpertsRegime regime;            // kAuto unless forced (ZAYA_EXPERTS_REGIME)
};

enum class SkipMode : int32_t { kScaledInput = 0, kZero = 1 };

// moe_mlp: y[t] = sum_j topk_weights[t, j] * expert_{ids[t, j]}(x[t]) (+ the skip route), with
// expert_e(v) = W2_e (SiLU(v W1_e[:F]^T) * (v W1_e[F:]^T)) and the SwiGLU activation rounded to bf16
// before fc2 (reference.moe_mlp). The schedule is moe_align's: sorted_token_ids holds pair indices
// t*k + j grouped by expert, each expert's segment [expert_offsets[e], expert_offsets[e+1]) padded
// to a multiple of block_m with the pad value T*k.
struct MoeMlpParams {
  const uint16_t* x;               // [T, H] bf16 bits, row stride x_row_stride
  int64_t x_row_stride;            // elements
  const float* topk_weights;       // [T, k] fp32, contiguous
  const int32_t* topk_ids;         // [T, k] int32, contiguous; id == E: the skip route; others outside [0, E): none
  const int32_t* sorted_token_ids; // [capacity] int32 pair indices t*k + j, padding T*k
  const int32_t* expert_offsets;   // [E + 1] int32 padded segment starts (device), offsets[E] = num_padded
  const uint16_t* w_fc1;           // [E, 2F, H] bf16 bits, contiguous: rows [0, F) gate, [F, 2F) up
  const uint16_t* w_fc2;           // [E, H, F] bf16 bits, contiguous
  uint16_t* out;                   // [T, H] bf16 bits, row stride out_row_stride
  int64_t out_row_stride;          // elements
  int32_t num_tokens;              // T >= 0
  int32_t k;                       // slots per token, >= 1
  int32_t hidden;                  // H
  int32_t ffn;                     // F
  int32_t num_experts;             // E
  int32_t capacity;                // sorted_token_ids.numel() = T*k + E*(block_m - 1)
  SkipMode skip_mode;
  void* workspace;                 // launcher-allocated scratch (moe_mlp_workspace_bytes), or nullptr
  ExpertsRegime regime;            // kAuto unless forced (ZAYA_EXPERTS_REGIME)
};

// The fused moe_mlp pipeline's intermediates, shared by both regimes (D1-tiled and D2-decode agree on
// them so that either regime's fc1 / fc2 and the portable skip / combine kernels
// (common/experts_rows.cuh) fit together). In params.workspace, in this order, each 256-byte aligned:
//   act      [capacity, F] bf16: SiLU(gate) * up rounded to bf16, row = slot of sorted_token_ids (fc1's
//            output, fc2's input); rows of padding slots are never written nor read.
//   pair_out [T*k, H] fp32, k > 1 only: row = pair index t*k + j, expert output times topk_weights[t, j];
//            the combine kernel sums the k rows of a token in slot order (plus the skip term) and rounds
//            once to bf16. With k == 1 fc2 stores bf16(weight * acc) into out directly.
// moe_mlp_act_bytes (also pair_out's offset) and moe_mlp_pair_out_bytes give the layout;
// moe_mlp_workspace_bytes (launch.h) the whole size, which a regime may extend past these two.
constexpr int64_t kExpertsWorkspaceAlign = 256;
constexpr int64_t experts_align_up(int64_t bytes) {
  return (bytes + kExpertsWorkspaceAlign - 1) / kExpertsWorkspaceAlign * kExpertsWorkspaceAlign;
}
constexpr int64_t moe_mlp_act_bytes(int64_t capacity, int64_t ffn) { return experts_align_up(capacity * ffn * 2); }
constexpr int64_t moe_mlp_pair_out_bytes(int64_t pairs, int64_t hidden, int64_t k) {
  return k == 1 ? 0 : experts_align_up(pairs * hidden * 4);
}
// The kernels' bound on E (the launchers check it): a CTA's threads own one expert each in the work-list scan.
constexpr int kExpertsMaxExperts = 256;

// ---- end experts ----

// ---- CCA attention (cca_prep, attention_prefill, attention_decode): params below this line ----

// The paged KV cache of every attention op: k_cache / v_cache [num_pages, page_size, Hkv, D] bf16,
// contiguous (vLLM's FlashAttention layout); block_table [B, max_pages] int32, row stride
// block_table_row_stride; position p of sequence b lives at page block_table[b][p / page_size],
// slot p % page_size.
struct PagedKvCache {
  uint16_t* k;                     // [num_pages, page_size, Hkv, D] bf16 bits
  uint16_t* v;                     // same shape
  const int32_t* block_table;      // [B, max_pages] int32
  int64_t block_table_row_stride;  // elements
  int32_t num_pages;
  int32_t page_size;
  int32_t max_pages;               // pages per block-table row
  int32_t kv_heads;                // Hkv
  int32_t head_dim;                // D
};

// attention_prefill: causal (or not) GQA attention of packed varlen queries over the paged cache.
// Sequence b's queries are rows [cu_seqlens_q[b], cu_seqlens_q[b+1]) of q, its LAST n_b tokens: query
// i sits at position seq_lens_k[b] - n_b + i and (causal) sees keys 0..that position, else all
// seq_lens_k[b] keys. Query head h reads KV head h / (q_heads / kv_heads). softmax in fp32.
// Data-dependent preconditions (the caller's duty on a GPU, checked by the CPU kernel): cu_seqlens_q
// from 0, non-decreasing, ending at num_tokens; n_b <= seq_lens_k[b]; the pages of positions
// [0, seq_lens_k[b]) inside the block-table row and in [0, num_pages).
struct AttentionPrefillParams {
  const uint16_t* q;               // [T, Hq, D] bf16 bits, last dim contiguous
  int64_t q_token_stride;          // elements
  int64_t q_head_stride;           // elements
  PagedKvCache cache;
  const int32_t* cu_seqlens_q;     // [B + 1] int32
  const int32_t* seq_lens_k;       // [B] int32, keys per sequence including its queries
  uint16_t* out;                   // [T, Hq, D] bf16 bits, last dim contiguous
  int64_t out_token_stride;        // elements
  int64_t out_head_stride;         // elements
  int32_t num_tokens;              // T
  int32_t batch;                   // B
  int32_t q_heads;                 // Hq
  float softmax_scale;             // finite, > 0 (1/sqrt(D) by default)
  int32_t causal;                  // 1: causal, 0: every query sees all of its sequence's keys
};

// cca_prep: the CCA pre-attention of a packed varlen batch (reference.cca_prep; ZAYA1_ARCHITECTURE.md §4.2-4.4),
// specialised to head dim 128 and Hq = 4 * Hkv = 8 (proj [T, 1536]). One launch: q, the new K/V rows and
// the conv / delayed-value states. Data-dependent preconditions (the caller's duty on a GPU): cu_seqlens
// from 0, non-decreasing, ending at num_tokens; seq_start >= 0; the new positions inside the block-table
// row with pages in [0, num_pages).
struct CcaPrepParams {
  const uint16_t* proj;            // [T, 1536] bf16 bits (q 1024 | k 256 | v1 128 | v2 128), last dim contiguous
  int64_t proj_row_stride;         // elements, a multiple of 8
  const int32_t* cu_seqlens;       // [B + 1] int32
  const int32_t* seq_start;        // [B] int32: absolute position of each chunk's first token
  float* conv_state;               // [B, 1280, 2] fp32, contiguous, in/out: raw (u_{t-2}, u_{t-1})
  float* value_state;              // [B, 128] fp32, contiguous, in/out: v2 of the previous token
  const void* conv1_w;             // [1280, 1, 2] fp32 | bf16, contiguous (tap 0 = older sample)
  const void* conv1_b;             // [1280]
  const void* conv2_w;             // [1280, 128, 2] fp32 | bf16, contiguous: head g's [128 out, 256 = (in, tap)]
  const void* conv2_b;             // [1280]
  const void* temp;                // [2]
  DType conv1_w_dtype, conv1_b_dtype, conv2_w_dtype, conv2_b_dtype, temp_dtype;
  PagedKvCache cache;              // written at positions seq_start[b] .. seq_start[b] + n_b - 1
  uint16_t* q;                     // [T, 8, 128] bf16 bits, last dim contiguous
  int64_t q_token_stride;          // elements, a multiple of 8
  int64_t q_head_stride;           // elements, a multiple of 8
  int32_t num_tokens;              // T
  int32_t batch;                   // B
  int32_t rotary_dim;              // even, 2..128: RoPE on dims [0, rotary_dim), pairs (d, d + rotary_dim / 2)
  float inv_freq[64];              // rotary_dim / 2 fp32 inverse frequencies, computed as reference.rope_cos_sin
};

constexpr int kCcaHeadDim = 128;   // D
constexpr int kCcaQHeads = 8;      // Hq
constexpr int kCcaKvHeads = 2;     // Hkv
constexpr int kCcaHeads = kCcaQHeads + kCcaKvHeads;  // conv groups: one CTA works on one of them
constexpr int kCcaChannels = kCcaHeads * kCcaHeadDim;  // 1280 = C
constexpr int kCcaValueWidth = kCcaKvHeads * kCcaHeadDim / 2;  // 128: v1 and v2 each
constexpr int kCcaProjWidth = kCcaChannels + 2 * kCcaValueWidth;  // 1536

// attention_decode: one query token per sequence over its seq_lens[b] cached keys (no mask); a sequence with
// seq_lens 0 gets zeros. Split-KV: work unit (sequence b, KV head j, split s) reads keys
// [s * split_keys, min((s + 1) * split_keys, seq_lens[b])) for all Hq / Hkv query heads of j; with
// num_splits > 1 a combine kernel merges the splits' (max, sum, o) partials by log-sum-exp.
// Data-dependent preconditions (the caller's duty on a GPU): 0 <= seq_lens[b] <= num_splits * split_keys
// and <= max_pages * page_size; the pages of positions [0, seq_lens[b]) in [0, num_pages).
struct AttentionDecodeParams {
  const uint16_t* q;               // [B, Hq, D] bf16 bits, last dim contiguous
  int64_t q_batch_stride;          // elements, a multiple of 8
  int64_t q_head_stride;           // elements, a multiple of 8
  PagedKvCache cache;
  const int32_t* seq_lens;         // [B] int32
  uint16_t* out;                   // [B, Hq, D] bf16 bits, last dim contiguous
  int64_t out_batch_stride;        // elements, a multiple of 8
  int64_t out_head_stride;         // elements, a multiple of 8
  float* partial_o;                // [B, Hq, num_splits, D] fp32 workspace when num_splits > 1, else nullptr
  float* partial_ml;               // [B, Hq, num_splits, 2] fp32: (max of log2 logits, sum of 2^(logit - max))
  int32_t batch;                   // B
  int32_t q_heads;                 // Hq = 4 * Hkv
  int32_t num_splits;              // >= 1
  int32_t split_keys;              // keys per split, a multiple of kDecodeKeyStep
  float softmax_scale;             // finite, > 0
};

constexpr int kDecodeGroup = 4;    // query heads per KV head the decode kernel takes (ZAYA1: 8 / 2)
constexpr int kDecodeKeyStep = 32;  // split_keys granularity: 8 lane groups x 4 keys (attention_decode.cuh)

// ---- end CCA attention ----

}  // namespace zk
