// SPDX-License-Identifier: Apache-2.0
// experts_gfx942_gemm.h: the MFMA grouped-GEMM kernel of the gfx942 experts (grouped_gemm, moe_mlp's
// fc1 and fc2): one templated kernel, three epilogues. All lane/row/LDS index math is
// common/mfma_layout_experts.h (CPU-tested); this file is the data movement and the arithmetic.
//
// Per workgroup (256 threads, 4 waves): one tile of 128 weight rows x kBm tokens of one expert,
// C^T[feature, token] accumulated in fp32 by v_mfma_f32_32x32x8_bf16 over 64-wide K blocks:
//   * global -> registers -> LDS, 16-byte vectors (global_load_dwordx4, 8 lanes per 128-byte row), two
//     LDS stages, one barrier per K block: in block kb the wave runs kb's MFMAs from one stage, writes
//     block kb + 1 (requested during block kb - 1) to the other, then requests block kb + 2, so a
//     global load has a whole block of MFMAs (32 per wave at bm = 128, ~2K cycles) to land. Every
//     prefetch is unconditional (clamped to a valid address, masked to zero by a select), so
//     s_waitcnt counts one path only.
//   * operands: each lane reads its 64-byte K run of one weight row and of one token row per block
//     (4 ds_read_b128 each, swizzled rows, conflict-free), 8 MFMA steps per block.
//   * the expert of the tile, its rows and the K slice come from the device (expert_offsets), no host
//     sync; an index past the last tile exits at once.
// Epilogues (per lane: one token, 4 consecutive features per register group, 8-byte stores):
//   kStore:   c[row][f] = bf16(acc)                       (grouped_gemm; zero tiles write zeros)
//   kSwiGlu:  act[row][f] = bf16(silu(gate) * up)         (moe_mlp fc1: rows gathered by sorted ids)
//   kCombine: out[token][f] = bf16(w * acc) when top_k == 1, else pair_out[pair][f] = w * acc (fp32)
// kSplit: the tile's K is cut in `split` slices; each slice stores its fp32 partial, the last slice
// to arrive (agent-scope acquire/release on a counter) sums all slices' partials from memory in slice
// order (bitwise reproducible whichever arrives last), resets the counter and runs the epilogue.
#pragma once

#include <stdint.h>

#include "../common/compat.h"
#include "../common/mfma_layout_experts.h"

namespace zk {
namespace experts_hip {

using namespace experts_gfx942;

using u32x2 = uint32_t __attribute__((ext_vector_type(2)));
using u32x4 = uint32_t __attribute__((ext_vector_type(4)));
using f32x4 = float __attribute__((ext_vector_type(4)));
using f32x16 = float __attribute__((ext_vector_type(16)));
using bf16x4 = short __attribute__((ext_vector_type(4)));

enum class Epilogue : int { kStore = 0, kSwiGlu = 1, kCombine = 2 };

// Everything one GEMM launch needs; filled by the launchers in experts_gfx942.hip.
struct GemmArgs {
  // token operand: row r of a segment reads a + src * a_row_stride, src = r, or (gather) the token of
  // pair sorted_ids[r] (none for padding pairs >= num_pairs: a zero row)
  const uint16_t* a;               // bf16 [rows, k], row stride a_row_stride (a multiple of 8)
  int64_t a_row_stride;
  bool gather;
  const int32_t* sorted_ids;       // moe_mlp: [capacity] pair indices; nullptr for grouped_gemm
  const uint16_t* w;               // bf16 [E, weight_rows, k], contiguous
  int64_t w_expert_stride;         // weight_rows * k
  const int32_t* offsets;          // [E + 1] segment starts
  int32_t num_experts;
  int32_t m;                       // rows covered by the segments (M, or capacity)
  bool with_outer;                 // grouped_gemm: rows outside the experts are zero tiles
  int32_t n;                       // output features: N (store / combine) or F (SwiGLU)
  int32_t k;                       // reduction length, a multiple of 8
  int32_t ffn;                     // F (SwiGLU: up rows start at F)
  uint16_t* c;                     // kStore: [m, n]; kSwiGlu: act [m, F]; kCombine, top_k == 1: out [T, H]
  int64_t c_row_stride;
  const float* topk_weights;       // kCombine: [T * top_k] fp32
  float* pair_out;                 // kCombine, top_k > 1: [T * top_k, n] fp32
  int32_t num_pairs;               // T * top_k
  int32_t top_k;
  int32_t mtiles;
  int32_t split;
  int32_t kblocks;
  float* partials;                 // kSplit: grid slots of acc_regs(bm) x 256 floats
  uint32_t* counters;              // kSplit: [mtiles * ntiles], zero before the launch
};

ZK_DEVICE uint32_t pack_bf16x2(float lo, float hi) {
  return static_cast<uint32_t>(float_to_bf16(lo)) | (static_cast<uint32_t>(float_to_bf16(hi)) << 16);
}

ZK_DEVICE bf16x4 step_operand(const u32x4 (&run)[4], int step) {
  const u32x4 v = run[step / 2];
  return __builtin_bit_cast(bf16x4, (step % 2) ? v.zw : v.xy);
}

// silu(g) * u in fp32 (the reference: F.silu(h[:, :F]) * h[:, F:] before rounding to bf16).
// exp2 of a large positive argument gives inf and rcp(inf) = 0: silu -> -0 for g << 0, as it should.
ZK_DEVICE float swiglu(float gate, float up) {
  return gate * fast_rcp(1.f + fast_exp2(-1.4426950408889634f * gate)) * up;
}

template <int kBm>
struct Accumulators {
  f32x16 v[kFeatureBlocks][token_blocks(kBm)];
};

// The tile's token row of lane `lane` in block fm as an absolute row; `ok` when inside the tile.
ZK_DEVICE int tile_row(const MTile& mt, int wave, int fm, int lane, int bm, bool& ok) {
  const int r = token_tile_row(wave, fm, lane, bm);
  ok = r < mt.rows;
  return mt.row0 + r;
}

template <int kBm, Epilogue kEpi>
ZK_DEVICE void epilogue(const GemmArgs& p, const MTile& mt, int ntile, int wave, int lane,
                        const Accumulators<kBm>& acc) {
  constexpr bool kSwiGlu = kEpi == Epilogue::kSwiGlu;
#pragma unroll
  for (int fm = 0; fm < token_blocks(kBm); ++fm) {
    bool ok;
    const int row = tile_row(mt, wave, fm, lane, kBm, ok);
    if constexpr (kEpi == Epilogue::kSwiGlu) {
#pragma unroll
      for (int g = 0; g < 4; ++g) {
        const int64_t f = acc_feature(ntile, wave, 0, lane, 4 * g, true);
        if (!ok || f >= p.ffn) continue;
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = swiglu(acc.v[0][fm][4 * g + e], acc.v[1][fm][4 * g + e]);
        *reinterpret_cast<u32x2*>(p.c + row * p.c_row_stride + f) =
            u32x2{pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3])};
      }
    } else {
      int pair = 0;
      float weight = 1.f;
      if constexpr (kEpi == Epilogue::kCombine) {
        pair = ok ? p.sorted_ids[row] : p.num_pairs;
        ok = ok && pair >= 0 && pair < p.num_pairs;
        weight = ok ? p.topk_weights[pair] : 0.f;
      }
#pragma unroll
      for (int fn = 0; fn < kFeatureBlocks; ++fn) {
#pragma unroll
        for (int g = 0; g < 4; ++g) {
          const int64_t f = acc_feature(ntile, wave, fn, lane, 4 * g, kSwiGlu);
          if (!ok || f >= p.n) continue;
          const f32x16& a = acc.v[fn][fm];
          const float v0 = weight * a[4 * g], v1 = weight * a[4 * g + 1];
          const float v2 = weight * a[4 * g + 2], v3 = weight * a[4 * g + 3];
          if (kEpi == Epilogue::kCombine && p.top_k > 1) {
            *reinterpret_cast<f32x4*>(p.pair_out + static_cast<int64_t>(pair) * p.n + f) = f32x4{v0, v1, v2, v3};
          } else {
            const int64_t dst = (kEpi == Epilogue::kCombine ? pair : row) * p.c_row_stride + f;
            *reinterpret_cast<u32x2*>(p.c + dst) = u32x2{pack_bf16x2(v0, v1), pack_bf16x2(v2, v3)};
          }
        }
      }
    }
  }
}

template <int kBm, Epilogue kEpi, bool kSplit>
__global__ void __launch_bounds__(kThreads) experts_gemm_kernel(const GemmArgs p) {
  constexpr bool kSwiGlu = kEpi == Epilogue::kSwiGlu;
  constexpr int kFm = token_blocks(kBm);
  constexpr int kTokenLoads = token_loads(kBm);
  constexpr int kStage = stage_bytes(kBm);
  static_assert(lds_bytes(kBm) <= 65536, "two stages within the 64 KiB of LDS of a CDNA3 CU");
  __shared__ __attribute__((aligned(16))) uint8_t smem[2 * kStage];

  const int tid = static_cast<int>(threadIdx.x), wave = tid / mfma::kWave, lane = tid % mfma::kWave;
  const int64_t logical = logical_tile(blockIdx.x, gridDim.x);
  const TileCoord tc = tile_coord(logical, p.mtiles, kSplit ? p.split : 1);
  const MTile mt = locate_mtile(p.offsets, p.num_experts, p.m, p.with_outer, kBm, tc.mtile);
  if (mt.rows == 0) return;  // past the last tile of this launch's bound
  Accumulators<kBm> acc;
#pragma unroll
  for (int fn = 0; fn < kFeatureBlocks; ++fn) {
#pragma unroll
    for (int fm = 0; fm < kFm; ++fm) acc.v[fn][fm] = f32x16{};
  }
  if (mt.expert < 0) {  // grouped_gemm rows outside every expert: zeros, written once (slice 0)
    if (kEpi == Epilogue::kStore && tc.split == 0) epilogue<kBm, kEpi>(p, mt, tc.ntile, wave, lane, acc);
    return;
  }
  // moe_mlp: padding pairs fill the end of each segment, so a tile starting on one is all padding.
  if (p.sorted_ids != nullptr && p.sorted_ids[mt.row0] >= p.num_pairs) return;

  // ---- this thread's global sources: 4 weight-row chunks, kTokenLoads token-row chunks ------------
  const int chunk = load_chunk(tid);
  const uint16_t* w_expert = p.w + mt.expert * p.w_expert_stride;
  const uint16_t* w_src[kWeightLoads];
  bool w_ok[kWeightLoads];
#pragma unroll
  for (int i = 0; i < kWeightLoads; ++i) {
    const int rho = load_row(tid, i);
    const int64_t feature = kSwiGlu ? int64_t{64} * tc.ntile + rho % 64 : weight_row(tc.ntile, rho, false, 0);
    w_ok[i] = feature < (kSwiGlu ? p.ffn : p.n);
    w_src[i] = w_expert + (w_ok[i] ? weight_row(tc.ntile, rho, kSwiGlu, p.ffn) * p.k : 0) + 8 * chunk;
  }
  const uint16_t* t_src[kTokenLoads];
  bool t_ok[kTokenLoads];
#pragma unroll
  for (int j = 0; j < kTokenLoads; ++j) {
    const int r = load_row(tid, kWeightLoads + j) - kFeatureTile;
    bool ok = r < mt.rows;
    int64_t src = mt.row0 + (ok ? r : 0);
    if (p.gather) {
      const int pair = p.sorted_ids[src];
      ok = ok && pair >= 0 && pair < p.num_pairs;
      src = ok ? pair / p.top_k : 0;
    }
    t_ok[j] = ok;
    t_src[j] = p.a + src * p.a_row_stride + 8 * chunk;
  }

  int kb_begin = 0, kb_end = p.kblocks;
  if constexpr (kSplit) {
    kb_begin = split_kblock_begin(p.kblocks, p.split, tc.split);
    kb_end = split_kblock_begin(p.kblocks, p.split, tc.split + 1);
  }
  // Raw loads stay in registers across the loop's back edge; the masks (rows past the tile or past N,
  // chunks past K) are applied when they are written to LDS, one block later, so no instruction of the
  // block that issued them waits for them.
  u32x4 w_reg[kWeightLoads], t_reg[kTokenLoads];
  auto column = [&](int kb) { return kKBlock * kb + 8 * chunk; };  // k % 8 == 0: a chunk is all in or out
  auto load = [&](int kb) {
    const int at = column(kb) < p.k ? kKBlock * kb : 0;
#pragma unroll
    for (int i = 0; i < kWeightLoads; ++i) w_reg[i] = *reinterpret_cast<const u32x4*>(w_src[i] + at);
#pragma unroll
    for (int j = 0; j < kTokenLoads; ++j) t_reg[j] = *reinterpret_cast<const u32x4*>(t_src[j] + at);
  };
  auto store = [&](int stage, int kb) {
    uint8_t* base = smem + stage * kStage;
    const bool col_ok = column(kb) < p.k;
    constexpr u32x4 kZero = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int i = 0; i < kWeightLoads; ++i) {
      *reinterpret_cast<u32x4*>(base + stage_offset(load_row(tid, i), chunk)) = (w_ok[i] && col_ok) ? w_reg[i] : kZero;
    }
#pragma unroll
    for (int j = 0; j < kTokenLoads; ++j) {
      *reinterpret_cast<u32x4*>(base + stage_offset(load_row(tid, kWeightLoads + j), chunk)) =
          (t_ok[j] && col_ok) ? t_reg[j] : kZero;
    }
  };
  auto compute = [&](int stage) {
    const uint8_t* base = smem + stage * kStage;
    u32x4 w_run[kFeatureBlocks][4], t_run[kFm][4];
#pragma unroll
    for (int fn = 0; fn < kFeatureBlocks; ++fn) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        w_run[fn][c] = *reinterpret_cast<const u32x4*>(base + weight_read_offset(wave, fn, lane, c, kSwiGlu));
      }
    }
#pragma unroll
    for (int fm = 0; fm < kFm; ++fm) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        t_run[fm][c] = *reinterpret_cast<const u32x4*>(base + token_read_offset(wave, fm, lane, c, kBm));
      }
    }
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
#pragma unroll
      for (int fn = 0; fn < kFeatureBlocks; ++fn) {
#pragma unroll
        for (int fm = 0; fm < kFm; ++fm) {
          acc.v[fn][fm] = __builtin_amdgcn_mfma_f32_32x32x8bf16_1k(
              step_operand(w_run[fn], step), step_operand(t_run[fm], step), acc.v[fn][fm], 0, 0, 0);
        }
      }
    }
  };

  // ---- mainloop: one barrier per K block; block kb + 2 is in flight during block kb + 1's MFMAs ----
  auto last = [&](int kb) { return kb < kb_end ? kb : kb_end - 1; };  // past the end: a harmless re-read
  load(kb_begin);
  store(0, kb_begin);
  load(last(kb_begin + 1));
  __syncthreads();
  for (int kb = kb_begin; kb < kb_end; ++kb) {
    const int stage = (kb - kb_begin) & 1;
    compute(stage);
    store(stage ^ 1, last(kb + 1));  // block kb + 1, requested a block ago; stage last read before the barrier
    load(last(kb + 2));
    __syncthreads();
  }

  if constexpr (kSplit) {
    constexpr int kGroups = acc_regs(kBm) / 4;
    float* mine = p.partials + logical * (kGroups * 4 * kThreads);
#pragma unroll
    for (int q = 0; q < kGroups; ++q) {
      const f32x16& a = acc.v[q / (4 * kFm)][(q / 4) % kFm];
      const int r = 4 * (q % 4);
      *reinterpret_cast<f32x4*>(mine + partial_index(tid, q)) = f32x4{a[r], a[r + 1], a[r + 2], a[r + 3]};
    }
    int* arrival = reinterpret_cast<int*>(smem);  // LDS is free: the loop ended on a barrier
    const int64_t tile = int64_t{tc.ntile} * p.mtiles + tc.mtile;
    __builtin_amdgcn_fence(__ATOMIC_RELEASE, "agent");  // this thread's partial visible device-wide
    __syncthreads();
    if (tid == 0) {
      *arrival = static_cast<int>(
          __hip_atomic_fetch_add(&p.counters[tile], 1u, __ATOMIC_ACQ_REL, __HIP_MEMORY_SCOPE_AGENT));
    }
    __syncthreads();
    if (*arrival != p.split - 1) return;  // uniform: another slice of this tile is still running
    if (tid == 0) __hip_atomic_store(&p.counters[tile], 0u, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT);
    __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "agent");  // every slice's partial is visible
    // The sum restarts from zero and reads every slice's partial, this one's included (it is in memory
    // already): the same additions in slice order whichever slice arrives last, in the accumulators.
#pragma unroll
    for (int fn = 0; fn < kFeatureBlocks; ++fn) {
#pragma unroll
      for (int fm = 0; fm < kFm; ++fm) acc.v[fn][fm] = f32x16{};
    }
    for (int s = 0; s < p.split; ++s) {
      const int64_t slot = (int64_t{tc.ntile} * p.split + s) * p.mtiles + tc.mtile;
      const float* slice = p.partials + slot * (kGroups * 4 * kThreads);
#pragma unroll
      for (int q = 0; q < kGroups; ++q) {
        const f32x4 v = *reinterpret_cast<const f32x4*>(slice + partial_index(tid, q));
        f32x16& t = acc.v[q / (4 * kFm)][(q / 4) % kFm];
        const int r = 4 * (q % 4);
        t[r] += v.x;
        t[r + 1] += v.y;
        t[r + 2] += v.z;
        t[r + 3] += v.w;
      }
    }
    epilogue<kBm, kEpi>(p, mt, tc.ntile, wave, lane, acc);
  } else {
    epilogue<kBm, kEpi>(p, mt, tc.ntile, wave, lane, acc);
  }
}

}  // namespace experts_hip
}  // namespace zk
