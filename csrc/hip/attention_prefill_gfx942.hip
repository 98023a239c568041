// SPDX-License-Identifier: Apache-2.0
// attention_prefill_gfx942.hip: zaya::attention_prefill on MI300X (gfx942, CDNA3, wave64): flash-attention
// forward over the paged KV cache (semantics: reference.attention_prefill / AttentionPrefillParams),
// bf16 in, fp32 scores / softmax / accumulation, causal or not, GQA 4 query heads per KV head, D = 128.
// Compiled and checked at the ISA level only (tools/compile_hip.sh); no MI300X has run it (DESIGN.md §5).
//
// ---- Design ----------------------------------------------------------------------------------------
// Workgroup = 8 waves (512 threads) = one 64-position query tile of one sequence x the 4 query heads of
// one KV head: wave w computes head 4 kvh + w % 4 for query rows [32 (w / 4), + 32). All 8 waves consume
// every K/V tile the workgroup stages, so a 64-key K/V tile (32 KB) feeds 4 heads x 64 queries.
// Per 64-key tile and wave (common/mfma_layout_attention.h has every index):
//   S^T[64 keys x 32 queries] = K . Q^T: 2 key blocks x 2 d runs x 8 steps = 32 v_mfma_f32_32x32x8_bf16,
//     A = K rows from LDS (key order kappa), B = the wave's Q rows, loaded once into 32 VGPRs;
//   online softmax in fp32 per lane (one query per lane; max/sum exchanged with lane ^ 32 once);
//   O^T[128 d x 32 queries] += V^T . P^T: 4 d blocks x 2 key blocks x 4 steps = 32 MFMAs, B = P^T
//     packed to bf16 straight from the score registers, A = V^T rows from LDS.
// Pipeline (one barrier per key tile): 2 LDS stages of [K 16 KB | V^T 16 KB] = 64 KB (one workgroup per
// CU, 2 waves per SIMD). Waves 0-3 load K (4 x 16-byte loads per lane, 16 lanes per 256-byte key row),
// waves 4-7 load V (4 keys x 16 bytes per lane, transposed in registers into 8 x 8-byte V^T pieces).
// Tile t + 2's loads are issued after tile t + 1 is written to LDS, so they have tile t + 1's 64 MFMAs
// to land; the block-table entries of a tile are read one tile before its data (a dependent load
// issued behind nothing), so a page lookup never stalls a data load.
// Masking: keys >= seq_len_k and (causal) keys after the query get -inf before the max, only in the
// tiles on the diagonal or at the end of the sequence. Positions past the end are read clamped to the
// last key (finite data, probability 0), so nothing is zero-filled.
// Fixed-max softmax (DESIGN §2's CCA bound) is not used: AttentionPrefillParams carries any softmax
// scale and no key temperature, so no bound on the logits is known here; online rescaling costs
// 64 v_mul per lane per tile against 64 MFMAs.
// Order: KV-head-major, query tiles of a sequence adjacent (their K/V shared in one XCD's L2), the
// causal mask's heaviest tiles (last in the sequence) first.
#include "../common/compat.h"
#include "../common/launch.h"
#include "../common/mfma_layout_attention.h"

namespace zk {
namespace attention_hip {

using namespace attention_gfx942;
using gfx942_schedule::MTile;

using u32x2 = uint32_t __attribute__((ext_vector_type(2)));
using u32x4 = uint32_t __attribute__((ext_vector_type(4)));
using f32x16 = float __attribute__((ext_vector_type(16)));
using bf16x4 = short __attribute__((ext_vector_type(4)));

constexpr float kLog2e = 1.4426950408889634f;

ZK_DEVICE uint32_t pack_bf16x2(float lo, float hi) {
  return static_cast<uint32_t>(float_to_bf16(lo)) | (static_cast<uint32_t>(float_to_bf16(hi)) << 16);
}

// Round-to-nearest-even to bf16 without compat.h's NaN branch, for the probabilities: they are in
// [0, 1] or the canonical NaN of a NaN input (0x7fc00000, still a NaN after the rounding add). Saves
// ~5 VALU per value on the 32 per lane and tile (gfx942 has no f32 -> bf16 conversion instruction).
ZK_DEVICE uint32_t pack_probabilities(float lo, float hi) {
  const uint32_t a = __builtin_bit_cast(uint32_t, lo), b = __builtin_bit_cast(uint32_t, hi);
  const uint32_t ra = a + 0x7fffu + ((a >> 16) & 1u), rb = b + 0x7fffu + ((b >> 16) & 1u);
  return (ra >> 16) | (rb & 0xffff0000u);
}

ZK_DEVICE bf16x4 run_step(const u32x4 (&run)[4], int step) {  // 64-byte run, 8 steps of 8 bytes
  const u32x4 v = run[step / 2];
  return __builtin_bit_cast(bf16x4, (step % 2) ? v.zw : v.xy);
}

// V transposed in registers: keys[j] holds d 8dc + 0..7 of key 4kq + j (dword w = d 2w | 2w + 1 << 16);
// piece i holds d 8dc + i of the 4 keys: (key0 | key1 << 16, key2 | key3 << 16).
ZK_DEVICE u32x2 transpose_piece(const u32x4 (&keys)[kLoads], int i) {
  const int w = i / 2;
  if (i % 2 == 0) {
    return u32x2{(keys[0][w] & 0xffffu) | (keys[1][w] << 16), (keys[2][w] & 0xffffu) | (keys[3][w] << 16)};
  }
  return u32x2{(keys[0][w] >> 16) | (keys[1][w] & 0xffff0000u), (keys[2][w] >> 16) | (keys[3][w] & 0xffff0000u)};
}

__global__ void __launch_bounds__(kThreads) attention_prefill_gfx942_kernel(const AttentionPrefillParams p, int bound) {
  __shared__ __attribute__((aligned(16))) uint8_t smem[2 * kStageBytes];
  const int tid = static_cast<int>(threadIdx.x), lane = tid % mfma::kWave;
  // wave-uniform: in SGPRs (head and query block), not in VGPRs held through the loop
  const int wave = __builtin_amdgcn_readfirstlane(tid / mfma::kWave);

  const QTileCoord qc = qtile_coord(gfx942_schedule::logical_block(blockIdx.x, gridDim.x), bound);
  const MTile qt = gfx942_schedule::locate_mtile(p.cu_seqlens_q, p.batch, p.num_tokens, false, kQueryTile, qc.tile);
  if (qt.rows == 0) return;
  const int seq = qt.expert;
  const int seq_q_begin = p.cu_seqlens_q[seq];
  const int seq_q_len = p.cu_seqlens_q[seq + 1] - seq_q_begin;
  const int seq_len_k = p.seq_lens_k[seq];
  const int first_pos = seq_len_k - seq_q_len + (qt.row0 - seq_q_begin);  // position of the tile's row 0
  const bool causal = p.causal != 0;
  const int tiles = key_tiles(first_pos + qt.rows - 1, seq_len_k, causal);
  if (tiles == 0) return;  // no keys (a contract violation): nothing defined to write

  // ---- Q: this lane's query row as the B operand of the scores (rows past the tile: its last row) ----
  const int qrow = query_row(wave, lane);
  const bool q_ok = qrow < qt.rows;
  const int row = q_ok ? qrow : qt.rows - 1;
  const int64_t token = qt.row0 + row;
  const int query_pos = first_pos + row;
  const int visible_keys = causal && query_pos + 1 < seq_len_k ? query_pos + 1 : seq_len_k;
  const int head = qc.kvh * kGroup + wave_head(wave);
  u32x4 q_run[kDBlocks][4];
  {
    const uint16_t* q_src = p.q + token * p.q_token_stride + head * p.q_head_stride + 32 * (lane / 32);
#pragma unroll
    for (int c = 0; c < kDBlocks; ++c) {
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) q_run[c][cc] = *reinterpret_cast<const u32x4*>(q_src + 64 * c + 8 * cc);
    }
  }

  // ---- loaders: waves 0-3 K, waves 4-7 V (wave-uniform role) ----------------------------------------
  const bool k_loader = tid < kLoaderThreads;
  const int v = tid % kLoaderThreads;
  const PagedKvCache& cache = p.cache;
  const int32_t* table = cache.block_table + seq * cache.block_table_row_stride;
  const uint16_t* src = (k_loader ? cache.k : cache.v) + 8 * (k_loader ? k_load_chunk(v) : v_d_chunk(v));
  auto load_key = [&](int i) { return k_loader ? k_load_key(v, i) : v_load_key(v, i); };
  auto clamp_pos = [&](int pos) { return pos < seq_len_k ? pos : seq_len_k - 1; };
  auto last = [&](int t) { return t < tiles ? t : tiles - 1; };
  int32_t page[kLoads];
  u32x4 reg[kLoads];
  auto fetch_pages = [&](int t) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) page[i] = table[page_slot(clamp_pos(kKeyTile * t + load_key(i)), cache.page_size)];
  };
  auto load = [&](int t) {  // uses the pages fetched for tile t
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int pos = clamp_pos(kKeyTile * t + load_key(i));
      reg[i] = *reinterpret_cast<const u32x4*>(src + kv_offset(page[i], cache.page_size, cache.kv_heads, pos, qc.kvh));
    }
  };
  auto store = [&](int stage) {
    uint8_t* base = smem + stage * kStageBytes;
    if (k_loader) {
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        *reinterpret_cast<u32x4*>(base + k_offset(k_load_key(v, i), k_load_chunk(v))) = reg[i];
      }
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        *reinterpret_cast<u32x2*>(base + kKTileBytes + vt_write_offset(v, i)) = transpose_piece(reg, i);
      }
    }
  };

  // ---- online softmax state (per lane: one query) and the output accumulators ----------------------
  const float scale_log2 = p.softmax_scale * kLog2e;
  float row_max = -INFINITY;  // in the exp2 domain: max of score * scale * log2(e)
  float row_sum = 0.f;        // this lane half's 32 keys per tile; halves summed at the end
  f32x16 out[kOutBlocks];
#pragma unroll
  for (int db = 0; db < kOutBlocks; ++db) out[db] = f32x16{};

  auto compute = [&](int stage, int t) {
    const uint8_t* base = smem + stage * kStageBytes;
    f32x16 s[kKeyBlocks];
#pragma unroll
    for (int b = 0; b < kKeyBlocks; ++b) {
      s[b] = f32x16{};
#pragma unroll
      for (int c = 0; c < kDBlocks; ++c) {
        u32x4 k_run[4];
#pragma unroll
        for (int cc = 0; cc < 4; ++cc) {
          k_run[cc] = *reinterpret_cast<const u32x4*>(base + k_read_offset(b, c, lane, cc));
        }
#pragma unroll
        for (int step = 0; step < 8; ++step) {
          s[b] = __builtin_amdgcn_mfma_f32_32x32x8bf16_1k(run_step(k_run, step), run_step(q_run[c], step), s[b],
                                                          0, 0, 0);
        }
      }
    }
    // keys [0, visible_keys - 64 t) of this tile are visible to this lane's query; only the tiles on the
    // diagonal or at the end of the sequence take the branch
    const int visible = visible_keys - kKeyTile * t;
    if (visible < kKeyTile) {
#pragma unroll
      for (int b = 0; b < kKeyBlocks; ++b) {
#pragma unroll
        for (int r = 0; r < 16; ++r) s[b][r] = score_key(b, lane, r) < visible ? s[b][r] : -INFINITY;
      }
    }
    float tile_max = -INFINITY;  // of the raw scores: scale > 0, so scaling commutes with the max
#pragma unroll
    for (int b = 0; b < kKeyBlocks; ++b) {
#pragma unroll
      for (int r = 0; r < 16; ++r) tile_max = fmaxf(tile_max, s[b][r]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor(tile_max, 32)) * scale_log2;
    // Tile 0 holds key 0, which every query sees: row_max is finite from the first tile on.
    const float new_max = fmaxf(row_max, tile_max);
    const float alpha = fast_exp2(row_max - new_max);
    row_max = new_max;
    float sum = 0.f;
    bf16x4 pt[kKeyBlocks][4];
#pragma unroll
    for (int b = 0; b < kKeyBlocks; ++b) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float e[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          e[i] = fast_exp2(fmaf(s[b][4 * j + i], scale_log2, -new_max));
          sum += e[i];
        }
        pt[b][j] = __builtin_bit_cast(bf16x4, u32x2{pack_probabilities(e[0], e[1]), pack_probabilities(e[2], e[3])});
      }
    }
    row_sum = row_sum * alpha + sum;
#pragma unroll
    for (int db = 0; db < kOutBlocks; ++db) out[db] *= alpha;
#pragma unroll
    for (int b = 0; b < kKeyBlocks; ++b) {
#pragma unroll
      for (int db = 0; db < kOutBlocks; ++db) {
        u32x4 vt_run[2];
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          vt_run[rr] = *reinterpret_cast<const u32x4*>(base + kKTileBytes + vt_read_offset(db, b, lane, rr));
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const u32x4 w = vt_run[j / 2];
          const bf16x4 a = __builtin_bit_cast(bf16x4, (j % 2) ? w.zw : w.xy);
          out[db] = __builtin_amdgcn_mfma_f32_32x32x8bf16_1k(a, pt[b][j], out[db], 0, 0, 0);
        }
      }
    }
  };

  // ---- pipeline ------------------------------------------------------------------------------------
  fetch_pages(0);
  load(0);
  fetch_pages(last(1));
  store(0);
  load(last(1));
  fetch_pages(last(2));
  __syncthreads();
  for (int t = 0; t < tiles; ++t) {
    const int stage = t & 1;
    compute(stage, t);
    store(stage ^ 1);  // tile t + 1 (past the end: a re-read into the idle stage)
    load(last(t + 2));
    fetch_pages(last(t + 3));
    __syncthreads();
  }

  // ---- O = O^T / l -> out[token][head][d], 8-byte pieces of 4 consecutive d ------------------------
  const float total = row_sum + __shfl_xor(row_sum, 32);
  const float inv = 1.f / total;
  if (!q_ok) return;
  // The output addresses come from the lane id computed again here, by a volatile v_mbcnt pair that the
  // compiler can neither hoist nor merge with an earlier lane id: derived from `lane`, they were kept
  // (or their inputs were) in VGPRs through the loop, spilled at 256 VGPRs.
  int lane_out;
  asm volatile("v_mbcnt_lo_u32_b32 %0, -1, 0\n\tv_mbcnt_hi_u32_b32 %0, -1, %0" : "=v"(lane_out));
  const int64_t token_out = qt.row0 + query_row(wave, lane_out);
  uint16_t* dst = p.out + token_out * p.out_token_stride + head * p.out_head_stride;
#pragma unroll
  for (int db = 0; db < kOutBlocks; ++db) {
#pragma unroll
    for (int g = 0; g < 4; ++g) {
      const f32x16& o = out[db];
      *reinterpret_cast<u32x2*>(dst + out_d(db, lane_out, 4 * g)) =
          u32x2{pack_bf16x2(o[4 * g] * inv, o[4 * g + 1] * inv), pack_bf16x2(o[4 * g + 2] * inv, o[4 * g + 3] * inv)};
    }
  }
}

}  // namespace attention_hip

const char* launch_attention_prefill(const AttentionPrefillParams& params, StreamHandle stream_handle) {
  using namespace attention_gfx942;
  if (params.num_tokens <= 0 || params.batch <= 0) return nullptr;
  if (params.cache.head_dim != kHeadDim) return "attention_prefill (gfx942): head_dim must be 128";
  if (params.cache.kv_heads <= 0 || params.q_heads != kGroup * params.cache.kv_heads) {
    return "attention_prefill (gfx942): q_heads must be 4 x kv_heads (GQA 4:1)";
  }
  if (params.cache.page_size <= 0) return "attention_prefill (gfx942): page_size must be positive";
  if (params.q_token_stride % 8 != 0 || params.q_head_stride % 8 != 0) {
    return "attention_prefill (gfx942): q's token and head strides must be multiples of 8 (16-byte loads)";
  }
  if (params.out_token_stride % 4 != 0 || params.out_head_stride % 4 != 0) {
    return "attention_prefill (gfx942): out's token and head strides must be multiples of 4 (8-byte stores)";
  }
  const int64_t bound = gfx942_schedule::mtile_bound(params.num_tokens, params.batch, kQueryTile);
  const int64_t grid = bound * params.cache.kv_heads;
  if (grid > 0x7fffffff) return "attention_prefill (gfx942): too many query tiles for one launch";
  hipLaunchKernelGGL(attention_hip::attention_prefill_gfx942_kernel, dim3(static_cast<uint32_t>(grid)),
                     dim3(kThreads), 0, static_cast<hipStream_t>(stream_handle), params, static_cast<int>(bound));
  return last_launch_error();
}

}  // namespace zk
