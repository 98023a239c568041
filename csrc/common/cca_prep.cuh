// SPDX-License-Identifier: Apache-2.0
// cca_prep.cuh: the fused CCA pre-attention (contract: params.h CcaPrepParams, reference.cca_prep;
// ZAYA1_ARCHITECTURE.md §4.2-4.4), written once for CUDA and HIP. The including translation unit first
// includes its architecture's tensor-core step, which defines cca::ArchConfig (threads, tile rows, W chunk)
// and cca::Conv2Accumulator (zero / mma_chunk / store): cuda/cca_prep_sm90_mma.cuh (mma.sync) and
// hip/cca_prep_gfx942_mfma.h (MFMA). Everything else here is portable (no warpSize constant; row groups of
// 16 lanes whose shuffles stay inside a warp of 32 or a wave of 64).
//
// Work: a persistent grid; CTA c owns conv group (head) g = c % 10 for all of its tiles (tiles k = c / 10,
// c / 10 + grid / 10, ...; tiling in cca_prep_rows.cuh), so on sm_90a it loads head g's W (the grouped
// conv's [128 out, 256 = (in, tap)] weights, 64 KB) into shared memory once. Per tile of up to kTileRows
// packed rows:
//   0. row table: sequence (binary search of cu_seqlens), local index, position, cache row of each row.
//   1. A[row][2 i + tap] = bf16(y_{t-1+tap}[i]) for the head's 128 channels i: the depthwise conv over the
//      raw u of rows t-2, t-1, t, where rows before the chunk come from conv_state (fp32). K is ordered
//      (in, tap) so that W is conv2_w's own layout. y is rounded to bf16 for the tensor cores, as every
//      reference implementation does (§8.6).
//   2. Z = A . W^T on the tensor cores (fp32 accumulation), stored to shared memory over A.
//   3. epilogue, pass 1: x = z + conv2_b + mean skip (pre-conv u from proj), x *= sqrt(128) rsqrt(|x|^2 +
//      1e-12) (times tau for a key head), in fp32; the state update (below); the V rows (key-head CTAs).
//      pass 2: partial RoPE from shared memory (pairs (d, d + rotary_dim / 2)), bf16 stores of q (query
//      heads) or K (key heads) at the row's cache slot.
// State update, race-free in place: only a sequence's tokens 0 and 1 read conv_state, only its token 0
// reads value_state, and the tiling keeps tokens 0 and 1 in one tile. That tile's CTA for head g (the only
// CTA that reads the state's channels of head g) writes the new state after the barrier that ends phase 1:
// conv_state[b] = (u_{n-2}, u_{n-1}) (u_{-1} = the old state's newer column when n = 1), value_state[b] =
// v2 of token n-1 (head 9's CTA, which read the old value_state for token 0's V row in the same thread).
#pragma once

#include "cca_prep_rows.cuh"
#include "compat.h"
#include "params.h"

namespace zk {
namespace cca {

constexpr int kD = kCcaHeadDim;          // 128
constexpr int kK = 2 * kD;               // 256: (in channel, tap)
constexpr int kRowLanes = 16;            // a row group: 16 lanes x 8 elements = one 128-wide head row
constexpr int kAStride = kK + 8;         // bf16 elements per A row in shared memory (padded 16 bytes)
constexpr int kZStride = kD + 4;         // fp32 per Z row: 528 bytes, the same as an A row (Z aliases A)
static_assert(kAStride * 2 == kZStride * 4, "Z rows must alias A rows exactly");

struct RowInfo {
  int32_t seq;        // b
  int32_t index;      // local index i in the chunk; -1: no row (past the tile or past cu_seqlens[B])
  int32_t length;     // n_b
  int32_t position;   // seq_start[b] + i
  int64_t cache_row;  // element offset of the row's (page, slot) in k_cache / v_cache
};

template <class Arch>
struct Smem {
  static constexpr int kWStride = Arch::kChunkK + 8;
  static constexpr int64_t kWBytes = static_cast<int64_t>(kD) * kWStride * 2;
  static constexpr int64_t kABytes = static_cast<int64_t>(Arch::kTileRows) * kAStride * 2;
  static constexpr int64_t kRowBytes = static_cast<int64_t>(Arch::kTileRows) * sizeof(RowInfo);
  static constexpr int64_t kBytes = kWBytes + kABytes + kRowBytes;
};

// The kernel's shared memory: a static array where the backend allows one this large (gfx942: so that the
// LDS size is in the code object's metadata, which tools/compile_hip.sh checks), else the dynamic segment
// (sm_90a: ~103 KB, above the 48 KB static limit).
template <class Arch>
ZK_DEVICE unsigned char* kernel_smem() {
  if constexpr (Arch::kStaticSmem) {
    __shared__ __align__(16) unsigned char buffer[Smem<Arch>::kBytes];
    return buffer;
  } else {
    extern __shared__ __align__(16) unsigned char dynamic_buffer[];
    return dynamic_buffer;
  }
}

ZK_DEVICE float load_param(const void* base, DType dtype, int64_t i) {
  return dtype == DType::kFloat32 ? static_cast<const float*>(base)[i]
                                  : bf16_to_float(static_cast<const bf16_bits*>(base)[i]);
}

ZK_DEVICE void unpack8(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = bf16_to_float(static_cast<bf16_bits>(w[i] & 0xffffu));
    f[2 * i + 1] = bf16_to_float(static_cast<bf16_bits>(w[i] >> 16));
  }
}

ZK_DEVICE uint32_t pack2(float lo, float hi) {
  return static_cast<uint32_t>(float_to_bf16(lo)) | (static_cast<uint32_t>(float_to_bf16(hi)) << 16);
}

ZK_DEVICE uint4 pack8(const float (&f)[8]) {
  return make_uint4(pack2(f[0], f[1]), pack2(f[2], f[3]), pack2(f[4], f[5]), pack2(f[6], f[7]));
}

// 8 bf16 of proj row t at column col (a multiple of 8), as floats.
ZK_DEVICE void load_proj8(const CcaPrepParams& p, int64_t t, int col, float (&f)[8]) {
  unpack8(*reinterpret_cast<const uint4*>(p.proj + t * p.proj_row_stride + col), f);
}

// The 8 fp32 pairs conv_state[b][c .. c+7][0..1] (oldest first).
ZK_DEVICE void load_state8(const CcaPrepParams& p, int b, int c, float (&older)[8], float (&newer)[8]) {
  const float4* src = reinterpret_cast<const float4*>(p.conv_state + (static_cast<int64_t>(b) * kCcaChannels + c) * 2);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float4 v = src[i];
    older[2 * i] = v.x;
    newer[2 * i] = v.y;
    older[2 * i + 1] = v.z;
    newer[2 * i + 1] = v.w;
  }
}

// sin and cos of an fp32 angle (reference.rope_cos_sin's fp32 product position * inv_freq, up to ~1e6 rad):
// reduced to [-pi, pi] in fp64 (exact enough: |k| < 2^20 turns, error ~1e-10), then the fast single-precision
// instructions (abs error ~2^-21 on [-pi, pi]; q and k are rounded to bf16, 2^-9 relative, right after).
// The library sincosf would do the same reduction in fp32 with a Payne-Hanek slow path whose tables cost
// ~10 scalar registers that the gfx942 build cannot spare.
ZK_DEVICE void rope_sin_cos(float angle, float& s, float& c) {
  constexpr double kTwoPi = 6.283185307179586;
  const double a = static_cast<double>(angle);
  const float r = static_cast<float>(a - rint(a * (1.0 / kTwoPi)) * kTwoPi);
  s = __sinf(r);
  c = __cosf(r);
}

// Sum over the 16 lanes of a row group (xor partners stay in the group for warp 32 and wave 64).
ZK_DEVICE float row_sum(float v) {
  v += shfl_xor(v, 8);
  v += shfl_xor(v, 4);
  v += shfl_xor(v, 2);
  v += shfl_xor(v, 1);
  return v;
}

// Stage W's columns [k0, k0 + kChunkK) of head g (bf16; fp32 weights are rounded here) into w_s.
template <class Arch, bool kFp32Weights>
ZK_DEVICE void load_w_chunk(const CcaPrepParams& p, int g, int k0, uint16_t* w_s, int tid) {
  constexpr int kVecPerRow = Arch::kChunkK / 8;
  constexpr int kWStride = Smem<Arch>::kWStride;
  for (int v = tid; v < kD * kVecPerRow; v += Arch::kThreads) {
    const int n = v / kVecPerRow;
    const int k = k0 + (v % kVecPerRow) * 8;
    const int64_t src = (static_cast<int64_t>(g) * kD + n) * kK + k;
    uint4 bits;
    if (!kFp32Weights) {
      bits = *reinterpret_cast<const uint4*>(static_cast<const bf16_bits*>(p.conv2_w) + src);
    } else {
      const float4* f = reinterpret_cast<const float4*>(static_cast<const float*>(p.conv2_w) + src);
      const float4 lo = f[0], hi = f[1];
      bits = make_uint4(pack2(lo.x, lo.y), pack2(lo.z, lo.w), pack2(hi.x, hi.y), pack2(hi.z, hi.w));
    }
    *reinterpret_cast<uint4*>(w_s + n * kWStride + (v % kVecPerRow) * 8) = bits;
  }
}

// kFp32Weights: conv2_w is fp32 (rounded to bf16 as it is staged), else bf16 (a template parameter rather than
// a branch: the branch cost the gfx942 build 12 scalar registers).
template <class Arch, bool kFp32Weights>
__global__ void __launch_bounds__(Arch::kThreads) cca_prep_kernel(const CcaPrepParams p) {
  constexpr int kRows = Arch::kTileRows;
  constexpr int kRowsPerPass = Arch::kThreads / kRowLanes;
  constexpr int kWStride = Smem<Arch>::kWStride;
  unsigned char* smem_raw = kernel_smem<Arch>();
  uint16_t* w_s = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* a_s = reinterpret_cast<uint16_t*>(smem_raw + Smem<Arch>::kWBytes);
  float* z_s = reinterpret_cast<float*>(a_s);  // after the MMA
  RowInfo* rows = reinterpret_cast<RowInfo*>(smem_raw + Smem<Arch>::kWBytes + Smem<Arch>::kABytes);

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / kWarpSize;
  const int lane = tid % kWarpSize;
  const int head = static_cast<int>(blockIdx.x) % kCcaHeads;  // conv group g: q heads 0..7, k heads 8..9
  const bool key_head = head >= kCcaQHeads;
  const int kv_head = key_head ? head - kCcaQHeads : head / (kCcaQHeads / kCcaKvHeads);
  const int rlane = tid % kRowLanes;       // this thread's 8 channels / dims of a row: [8 rlane, 8 rlane + 8)
  const int d0 = rlane * 8;
  const int channel0 = head * kD + d0;     // in the packed u (and conv_state)

  // Per-thread constants: the depthwise taps and bias of its 8 channels, the grouped conv's bias of its 8
  // outputs, the key temperature. (Parameters: read before the wait, like the weights below; they are not
  // outputs of the kernels this one overlaps.)
  float tap_old[8], tap_new[8], bias1[8], bias2[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    tap_old[e] = load_param(p.conv1_w, p.conv1_w_dtype, 2 * (channel0 + e));
    tap_new[e] = load_param(p.conv1_w, p.conv1_w_dtype, 2 * (channel0 + e) + 1);
    bias1[e] = load_param(p.conv1_b, p.conv1_b_dtype, channel0 + e);
    bias2[e] = load_param(p.conv2_b, p.conv2_b_dtype, channel0 + e);
  }
  const float norm_scale = sqrtf(static_cast<float>(kD)) * (key_head ? load_param(p.temp, p.temp_dtype, kv_head)
                                                                      : 1.0f);
  if (Arch::kChunkK == kK) load_w_chunk<Arch, kFp32Weights>(p, head, 0, w_s, tid);

  wait_for_prerequisite_grids();  // proj, the states and the cache may come from the kernels just before
  const int tiles = num_tiles(p.num_tokens, kRows);
  const int tile_step = static_cast<int>(gridDim.x) / kCcaHeads;
  for (int tile = static_cast<int>(blockIdx.x) / kCcaHeads; tile < tiles; tile += tile_step) {
    const int start = tile_start(tile, p.num_tokens, kRows, p.cu_seqlens, p.batch);
    const int rows_used = tile_start(tile + 1, p.num_tokens, kRows, p.cu_seqlens, p.batch) - start;

    // ---- 0. row table ----
    if (tid < kRows) {
      RowInfo info{0, -1, 0, 0, 0};
      const int t = start + tid;
      if (tid < rows_used) {
        const int b = sequence_of(p.cu_seqlens, p.batch, t);
        const int first = p.cu_seqlens[b];
        const int length = p.cu_seqlens[b + 1] - first;
        if (t - first < length) {
          info.seq = b;
          info.index = t - first;
          info.length = length;
          info.position = p.seq_start[b] + info.index;
          if (key_head) {
            info.cache_row = cache_row_offset(p.cache.block_table + static_cast<int64_t>(b) *
                                                  p.cache.block_table_row_stride,
                                              p.cache.page_size, info.position, kCcaKvHeads * kD);
          }
        }
      }
      rows[tid] = info;
    }
    __syncthreads();

    // ---- 1. A = the depthwise conv's (y_{t-1}, y_t), interleaved per channel ----
    for (int r = tid / kRowLanes; r < kRows; r += kRowsPerPass) {
      const RowInfo info = rows[r];
      uint4 packed[2] = {make_uint4(0u, 0u, 0u, 0u), make_uint4(0u, 0u, 0u, 0u)};
      if (info.index >= 0) {
        const int64_t t = start + r;
        float u[8], u1[8], u2[8];  // u_t, u_{t-1}, u_{t-2}
        load_proj8(p, t, channel0, u);
        if (info.index >= 2) {
          load_proj8(p, t - 1, channel0, u1);
          load_proj8(p, t - 2, channel0, u2);
        } else {
          float older[8], newer[8];
          load_state8(p, info.seq, channel0, older, newer);
          if (info.index == 1) {
            load_proj8(p, t - 1, channel0, u1);
#pragma unroll
            for (int e = 0; e < 8; ++e) u2[e] = newer[e];
          } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) {
              u1[e] = newer[e];
              u2[e] = older[e];
            }
          }
        }
        float y[16];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          y[2 * e] = tap_old[e] * u2[e] + tap_new[e] * u1[e] + bias1[e];
          y[2 * e + 1] = tap_old[e] * u1[e] + tap_new[e] * u[e] + bias1[e];
        }
        packed[0] = make_uint4(pack2(y[0], y[1]), pack2(y[2], y[3]), pack2(y[4], y[5]), pack2(y[6], y[7]));
        packed[1] = make_uint4(pack2(y[8], y[9]), pack2(y[10], y[11]), pack2(y[12], y[13]), pack2(y[14], y[15]));
      }
      uint4* dst = reinterpret_cast<uint4*>(a_s + r * kAStride + 2 * d0);
      dst[0] = packed[0];
      dst[1] = packed[1];
    }
    __syncthreads();

    // ---- 2. Z = A . W^T ----
    Conv2Accumulator acc;
    acc.zero();
#pragma unroll
    for (int k0 = 0; k0 < kK; k0 += Arch::kChunkK) {
      if (Arch::kChunkK != kK) {
        load_w_chunk<Arch, kFp32Weights>(p, head, k0, w_s, tid);
        __syncthreads();
      }
      acc.mma_chunk(a_s, kAStride, k0, w_s, kWStride, rows_used, warp, lane);
      if (Arch::kChunkK != kK) __syncthreads();  // before the next chunk overwrites w_s
    }
    __syncthreads();  // every warp is done reading A before Z overwrites it
    acc.store(z_s, kZStride, rows_used, warp, lane);
    __syncthreads();

    // ---- 3. epilogue pass 1: bias, mean skip, normalisation; states; V ----
    for (int r0 = 0; r0 < kRows; r0 += kRowsPerPass) {  // uniform trip count: the shuffles need whole warps
      const int r = r0 + tid / kRowLanes;
      const RowInfo info = rows[r];
      const bool live = info.index >= 0;
      const int64_t t = start + r;
      float x[8];
      float* zr = z_s + r * kZStride + d0;
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = zr[e] + bias2[e];
      if (live) {
        float kraw[8], skip[8];
        load_proj8(p, t, kCcaQHeads * kD + kv_head * kD + d0, kraw);
        if (!key_head) {
          float qraw[8];
          load_proj8(p, t, head * kD + d0, qraw);
#pragma unroll
          for (int e = 0; e < 8; ++e) skip[e] = 0.5f * (qraw[e] + kraw[e]);
        } else {
          constexpr int kGroup = kCcaQHeads / kCcaKvHeads;
          float mean[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
          for (int h = 0; h < kGroup; ++h) {
            float qraw[8];
            load_proj8(p, t, (kv_head * kGroup + h) * kD + d0, qraw);
#pragma unroll
            for (int e = 0; e < 8; ++e) mean[e] += qraw[e];
          }
#pragma unroll
          for (int e = 0; e < 8; ++e) skip[e] = 0.5f * (mean[e] / static_cast<float>(kGroup) + kraw[e]);
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] += skip[e];
      }
      float sq = 0.0f;
#pragma unroll
      for (int e = 0; e < 8; ++e) sq = fmaf(x[e], x[e], sq);
      sq = row_sum(sq);
      const float scale = rsqrtf(sq + 1e-12f) * norm_scale;
      if (!live) continue;
#pragma unroll
      for (int e = 0; e < 8; ++e) zr[e] = x[e] * scale;

      const int64_t last = t - info.index + info.length - 1;  // the chunk's last row
      if (info.index == 0) {
        // New conv state of this head's 8 channels: (u_{n-2}, u_{n-1}); for n = 1, u_{-1} is the old newer.
        float older[8], newer[8], u_last[8];
        load_state8(p, info.seq, channel0, older, newer);
        load_proj8(p, last, channel0, u_last);
        if (info.length >= 2) load_proj8(p, last - 1, channel0, newer);
        float4* dst = reinterpret_cast<float4*>(p.conv_state +
                                                (static_cast<int64_t>(info.seq) * kCcaChannels + channel0) * 2);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          dst[i] = make_float4(newer[2 * i], u_last[2 * i], newer[2 * i + 1], u_last[2 * i + 1]);
        }
      }
      if (key_head) {
        // V row: head 0 = this token's v1, head 1 = the previous token's v2 (value_state for token 0).
        uint4 bits;
        if (kv_head == 0) {
          bits = *reinterpret_cast<const uint4*>(p.proj + t * p.proj_row_stride + kCcaChannels + d0);
        } else if (info.index > 0) {
          bits = *reinterpret_cast<const uint4*>(p.proj + (t - 1) * p.proj_row_stride + kCcaChannels +
                                                 kCcaValueWidth + d0);
        } else {
          float* vs = p.value_state + static_cast<int64_t>(info.seq) * kCcaValueWidth + d0;
          float old[8];
#pragma unroll
          for (int e = 0; e < 8; ++e) old[e] = vs[e];
          bits = pack8(old);
          float v2_last[8];
          load_proj8(p, last, kCcaChannels + kCcaValueWidth + d0, v2_last);
#pragma unroll
          for (int e = 0; e < 8; ++e) vs[e] = v2_last[e];
        }
        *reinterpret_cast<uint4*>(p.cache.v + info.cache_row + kv_head * kD + d0) = bits;
      }
    }
    __syncthreads();

    // ---- 3. epilogue pass 2: partial RoPE, bf16 stores of q or K ----
    const int half = p.rotary_dim / 2;
    for (int r = tid / kRowLanes; r < kRows; r += kRowsPerPass) {
      const RowInfo info = rows[r];
      if (info.index < 0) continue;
      const float* zr = z_s + r * kZStride;
      float out[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int d = d0 + e;
        const float x = zr[d];
        if (d < p.rotary_dim) {
          const int f = d < half ? d : d - half;
          float s, c;
          rope_sin_cos(static_cast<float>(info.position) * p.inv_freq[f], s, c);
          out[e] = d < half ? x * c - zr[d + half] * s : x * c + zr[d - half] * s;
        } else {
          out[e] = x;
        }
      }
      uint16_t* dst = key_head ? p.cache.k + info.cache_row + kv_head * kD + d0
                               : p.q + static_cast<int64_t>(start + r) * p.q_token_stride +
                                     static_cast<int64_t>(head) * p.q_head_stride + d0;
      *reinterpret_cast<uint4*>(dst) = pack8(out);
    }
    __syncthreads();  // before the next tile's row table and A overwrite rows / z_s
  }
}

// Grid: kCcaHeads CTAs per tile-column, at most kCtasPerSm per SM in all: e.g. sm_90a at T = 16384 on 132 SMs
// runs 260 CTAs (26 per head), each ~10 tiles of 63 rows; decode at B <= 63 is one tile: 10 CTAs.
template <class Arch>
inline int grid_size(int num_tokens, int num_sms) {
  const int tiles = num_tiles(num_tokens, Arch::kTileRows);
  int per_head = Arch::kCtasPerSm * num_sms / kCcaHeads;
  if (per_head < 1) per_head = 1;
  return kCcaHeads * (tiles < per_head ? tiles : per_head);
}

}  // namespace cca

// Launches the kernel (a programmatic dependent launch) on a non-empty batch; the caller has raised the
// dynamic shared memory limit where its backend needs that.
template <class Arch>
inline const char* cca_prep_launch(const CcaPrepParams& p, stream_t stream, int num_sms) {
  if (p.num_tokens == 0 || p.batch == 0) return nullptr;
  const dim3 grid(cca::grid_size<Arch>(p.num_tokens, num_sms));
  const size_t smem = Arch::kStaticSmem ? 0 : static_cast<size_t>(cca::Smem<Arch>::kBytes);
  if (p.conv2_w_dtype == DType::kFloat32) {
    return launch_dependent(cca::cca_prep_kernel<Arch, true>, grid, dim3(Arch::kThreads), smem, stream, p);
  }
  return launch_dependent(cca::cca_prep_kernel<Arch, false>, grid, dim3(Arch::kThreads), smem, stream, p);
}

}  // namespace zk
