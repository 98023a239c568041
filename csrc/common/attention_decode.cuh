// SPDX-License-Identifier: Apache-2.0
// attention_decode.cuh: split-KV (flash-decoding) attention of one query token per sequence over the paged
// KV cache, written once for CUDA (warp 32) and HIP (wave 64). Contract: params.h AttentionDecodeParams,
// reference.attention_decode. Decode is bandwidth-bound (B = 32, L = 32768 reads 1.07 GB of K/V for 17 MFLOP
// per sequence and head), so CUDA cores do the math and the design is about the reads:
//   * work unit (sequence b, KV head j, split s): the Hq / Hkv = 4 query heads of j share every K and V row
//     read (q is read once per unit, 1 KB), and the split (attention_decode_plan.cuh) lets B = 1 fill the GPU.
//   * 128 threads = 8 groups of 16 lanes; a group owns whole key rows (16 lanes x 16 bytes = one 128-wide
//     bf16 row). Per step a group loads 4 keys' K and V rows (8 x 16-byte loads per lane in flight before the
//     first use: 16 KB per CTA), takes the 4 x 4 dot products with shuffle reductions over its 16 lanes (xor
//     8, 4, 2, 1: the same inside a warp of 32 and a wave of 64), then updates its online softmax once per
//     step (one rescale per 4 keys).
//   * softmax in fp32, base 2: logits are pre-multiplied by softmax_scale * log2(e) through q, so each weight
//     is one exp2. The 8 groups merge in shared memory; with one split the CTA writes o directly, else it
//     stores (o unnormalised, max, sum) and attention_decode_combine_kernel merges the splits by log-sum-exp.
// Why not the fixed-maximum softmax CCA allows (|logit| <= sqrt(128) |tau| when q and k come normalised from
// cca_prep): (1) this op takes any q and cache, and the bound is a property of the producer, not of the
// inputs; (2) the weight of a key is exp(logit - bound), and the gap between the bound and the actual logits
// reaches 2 sqrt(128) |tau| (opposite directions), so fp32 exp underflows to 0 for every key once
// 2 * 11.3 * |tau| > ~87 (|tau| > ~3.9), giving 0 / 0 where the online maximum is exact; (3) decode is
// bandwidth-bound: the online rescale is one exp2 and 36 multiplies per group per 4 keys, hidden under the
// 4 KB of K/V those keys read.
#pragma once

#include "compat.h"
#include "params.h"

namespace zk {
namespace decode {

constexpr int kThreads = 128;
constexpr int kLanesPerRow = 16;                  // 16 lanes x 8 bf16 = one 128-wide K or V row
constexpr int kGroups = kThreads / kLanesPerRow;  // 8
constexpr int kKeysPerGroup = 4;                  // keys per group per step
constexpr int kHeadDim = 128;
constexpr int kGroup = kDecodeGroup;              // query heads per KV head: 4
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kGroups * kKeysPerGroup == kDecodeKeyStep, "a CTA step is kDecodeKeyStep keys");
static_assert(kGroup * 32 == kThreads, "the merge gives each query head 32 threads x 4 dims");

ZK_DEVICE void unpack_bf16x8(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = bf16_to_float(static_cast<bf16_bits>(w[i] & 0xffffu));
    f[2 * i + 1] = bf16_to_float(static_cast<bf16_bits>(w[i] >> 16));
  }
}

ZK_DEVICE uint2 pack_bf16x4(float a, float b, float c, float d) {
  uint2 r;
  r.x = static_cast<uint32_t>(float_to_bf16(a)) | (static_cast<uint32_t>(float_to_bf16(b)) << 16);
  r.y = static_cast<uint32_t>(float_to_bf16(c)) | (static_cast<uint32_t>(float_to_bf16(d)) << 16);
  return r;
}

// Sum over the 16 lanes of a row group (the xor partners stay inside the group for warp 32 and wave 64).
ZK_DEVICE float row_group_sum(float v) {
  v += shfl_xor(v, 8);
  v += shfl_xor(v, 4);
  v += shfl_xor(v, 2);
  v += shfl_xor(v, 1);
  return v;
}

// exp2 of a difference whose first term may be -inf (a masked key, an empty state): 0 there.
ZK_DEVICE float exp2_or_zero(float x) { return x == -INFINITY ? 0.0f : fast_exp2(x); }

struct SplitShared {
  float m[kGroups][kGroup];
  float l[kGroups][kGroup];
  float o[kGroups][kGroup][kHeadDim];
};

// Grid: one CTA per (b, j, s), flattened as ((b * Hkv + j) * num_splits + s).
__global__ void __launch_bounds__(kThreads) attention_decode_split_kernel(const AttentionDecodeParams p) {
  __shared__ SplitShared sh;
  const PagedKvCache& cache = p.cache;
  const int split = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.num_splits));
  const int pair = static_cast<int>(blockIdx.x / static_cast<unsigned>(p.num_splits));
  const int j = pair % cache.kv_heads;
  const int b = pair / cache.kv_heads;
  const int tid = static_cast<int>(threadIdx.x);
  const int group = tid / kLanesPerRow;
  const int lane = tid % kLanesPerRow;

  wait_for_prerequisite_grids();  // q and the cache may come from the kernel just before (cca_prep)
  const int length = max(p.seq_lens[b], 0);
  const int key_begin = split * p.split_keys;
  // Splits past the end have nothing to merge (the combine kernel counts only the ceil(length / split_keys)
  // first ones); split 0 always runs, so that length 0 still writes its zero output.
  if (split > 0 && key_begin >= length) return;
  const int key_end = min(key_begin + p.split_keys, length);

  // q of the 4 heads, this lane's 8 dims, times softmax_scale * log2(e): the logits come out in base 2.
  float q[kGroup][8];
  const float q_scale = p.softmax_scale * kLog2e;
#pragma unroll
  for (int h = 0; h < kGroup; ++h) {
    const uint16_t* src = p.q + static_cast<int64_t>(b) * p.q_batch_stride +
                          static_cast<int64_t>(j * kGroup + h) * p.q_head_stride + lane * 8;
    unpack_bf16x8(*reinterpret_cast<const uint4*>(src), q[h]);
#pragma unroll
    for (int e = 0; e < 8; ++e) q[h][e] *= q_scale;
  }

  float m[kGroup], l[kGroup], o[kGroup][8];
#pragma unroll
  for (int h = 0; h < kGroup; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) o[h][e] = 0.0f;
  }

  const int32_t* table_row = cache.block_table + static_cast<int64_t>(b) * cache.block_table_row_stride;
  const int64_t row_elems = static_cast<int64_t>(cache.kv_heads) * kHeadDim;
  const int64_t lane_offset = static_cast<int64_t>(j) * kHeadDim + lane * 8;
  // The trip count is the same for every group (shuffles need whole warps); keys past key_end are masked.
  for (int step = key_begin; step < key_end; step += kDecodeKeyStep) {
    uint4 kv[kKeysPerGroup], vv[kKeysPerGroup];
    bool valid[kKeysPerGroup];
#pragma unroll
    for (int i = 0; i < kKeysPerGroup; ++i) {
      const int key = step + group * kKeysPerGroup + i;
      valid[i] = key < key_end;
      kv[i] = make_uint4(0u, 0u, 0u, 0u);
      vv[i] = make_uint4(0u, 0u, 0u, 0u);
      if (valid[i]) {
        const int64_t page = table_row[key / cache.page_size];
        const int64_t offset = (page * cache.page_size + key % cache.page_size) * row_elems + lane_offset;
        kv[i] = *reinterpret_cast<const uint4*>(cache.k + offset);
        vv[i] = *reinterpret_cast<const uint4*>(cache.v + offset);
      }
    }
    float s[kKeysPerGroup][kGroup];
#pragma unroll
    for (int i = 0; i < kKeysPerGroup; ++i) {
      float k[8];
      unpack_bf16x8(kv[i], k);
#pragma unroll
      for (int h = 0; h < kGroup; ++h) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) dot = fmaf(q[h][e], k[e], dot);
        dot = row_group_sum(dot);
        s[i][h] = valid[i] ? dot : -INFINITY;
      }
    }
    float v[kKeysPerGroup][8];
#pragma unroll
    for (int i = 0; i < kKeysPerGroup; ++i) unpack_bf16x8(vv[i], v[i]);
#pragma unroll
    for (int h = 0; h < kGroup; ++h) {
      float mx = m[h];
#pragma unroll
      for (int i = 0; i < kKeysPerGroup; ++i) mx = fmaxf(mx, s[i][h]);
      // mx is -inf only while this group has seen no key at all; then every weight below is 0.
      const float base = mx == -INFINITY ? 0.0f : mx;
      const float alpha = exp2_or_zero(m[h] - base);
      m[h] = mx;
      float sum = l[h] * alpha;
#pragma unroll
      for (int e = 0; e < 8; ++e) o[h][e] *= alpha;
#pragma unroll
      for (int i = 0; i < kKeysPerGroup; ++i) {
        const float w = exp2_or_zero(s[i][h] - base);
        sum += w;
#pragma unroll
        for (int e = 0; e < 8; ++e) o[h][e] = fmaf(w, v[i][e], o[h][e]);
      }
      l[h] = sum;
    }
  }
  allow_dependent_launch();

  // Merge the 8 groups: thread (h = tid / 32, dims 4 * (tid % 32) .. + 3).
#pragma unroll
  for (int h = 0; h < kGroup; ++h) {
    if (lane == 0) {
      sh.m[group][h] = m[h];
      sh.l[group][h] = l[h];
    }
#pragma unroll
    for (int e = 0; e < 8; e += 4) {
      *reinterpret_cast<float4*>(&sh.o[group][h][lane * 8 + e]) = make_float4(o[h][e], o[h][e + 1], o[h][e + 2],
                                                                              o[h][e + 3]);
    }
  }
  __syncthreads();
  const int h = tid / 32;
  const int d = (tid % 32) * 4;
  float mx = -INFINITY;
#pragma unroll
  for (int g = 0; g < kGroups; ++g) mx = fmaxf(mx, sh.m[g][h]);
  const float base = mx == -INFINITY ? 0.0f : mx;
  float sum = 0.0f;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    const float w = exp2_or_zero(sh.m[g][h] - base);
    sum = fmaf(w, sh.l[g][h], sum);
    const float4 og = *reinterpret_cast<const float4*>(&sh.o[g][h][d]);
    acc[0] = fmaf(w, og.x, acc[0]);
    acc[1] = fmaf(w, og.y, acc[1]);
    acc[2] = fmaf(w, og.z, acc[2]);
    acc[3] = fmaf(w, og.w, acc[3]);
  }
  const int head = j * kGroup + h;
  if (p.num_splits == 1) {
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // no key: zeros, as the reference
    uint16_t* dst = p.out + static_cast<int64_t>(b) * p.out_batch_stride +
                    static_cast<int64_t>(head) * p.out_head_stride + d;
    *reinterpret_cast<uint2*>(dst) = pack_bf16x4(acc[0] * inv, acc[1] * inv, acc[2] * inv, acc[3] * inv);
    return;
  }
  const int64_t slot = (static_cast<int64_t>(b) * p.q_heads + head) * p.num_splits + split;
  *reinterpret_cast<float4*>(p.partial_o + slot * kHeadDim + d) = make_float4(acc[0], acc[1], acc[2], acc[3]);
  if (tid % 32 == 0) *reinterpret_cast<float2*>(p.partial_ml + slot * 2) = make_float2(mx, sum);
}

// Grid: one CTA per (b, query head); thread d owns output dim d. Merges the first ceil(length / split_keys)
// splits' partials by log-sum-exp.
__global__ void __launch_bounds__(kHeadDim) attention_decode_combine_kernel(const AttentionDecodeParams p) {
  const int head = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.q_heads));
  const int b = static_cast<int>(blockIdx.x / static_cast<unsigned>(p.q_heads));
  const int d = static_cast<int>(threadIdx.x);
  wait_for_prerequisite_grids();  // the split kernel's partials
  const int length = max(p.seq_lens[b], 0);
  const int splits = min((length + p.split_keys - 1) / p.split_keys, p.num_splits);
  const int64_t first = (static_cast<int64_t>(b) * p.q_heads + head) * p.num_splits;
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, p.partial_ml[(first + s) * 2]);
  const float base = mx == -INFINITY ? 0.0f : mx;
  float sum = 0.0f, acc = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float2 ml = *reinterpret_cast<const float2*>(p.partial_ml + (first + s) * 2);
    const float w = exp2_or_zero(ml.x - base);
    sum = fmaf(w, ml.y, sum);
    acc = fmaf(w, p.partial_o[(first + s) * kHeadDim + d], acc);
  }
  const float out = sum > 0.0f ? acc / sum : 0.0f;
  p.out[static_cast<int64_t>(b) * p.out_batch_stride + static_cast<int64_t>(head) * p.out_head_stride + d] =
      float_to_bf16(out);
}

}  // namespace decode

// The split kernel, then (num_splits > 1) the combine kernel, as programmatic dependent launches.
inline const char* attention_decode_launch(const AttentionDecodeParams& p, stream_t stream) {
  const unsigned units = static_cast<unsigned>(p.batch) * static_cast<unsigned>(p.cache.kv_heads) *
                         static_cast<unsigned>(p.num_splits);
  if (const char* err = launch_dependent(decode::attention_decode_split_kernel, dim3(units), dim3(decode::kThreads),
                                         0, stream, p)) {
    return err;
  }
  if (p.num_splits == 1) return nullptr;
  return launch_dependent(decode::attention_decode_combine_kernel,
                          dim3(static_cast<unsigned>(p.batch) * static_cast<unsigned>(p.q_heads)),
                          dim3(decode::kHeadDim), 0, stream, p);
}

}  // namespace zk
