// SPDX-License-Identifier: Apache-2.0
// mfma_layout_attention.h: the index math of the gfx942 attention prefill (hip/attention_prefill_gfx942*):
// the key order of the score accumulators, the LDS layouts of the K and V^T tiles and their swizzles,
// the global -> LDS load assignment (V transposed on the way), the paged-cache addresses and the tile
// schedule. Integer functions only, __host__ __device__: the kernel calls exactly these, and
// tests/test_mfma_layout_attention.py compiles this header for the host and checks them against the
// documented MFMA layouts (common/mfma_layout.h) by simulating whole MFMAs.
//
// Orientation. Scores are computed transposed, S^T[key, query] = K[key, :] . Q[query, :] (A = K rows
// from LDS, B = the wave's 32 query rows, held in registers), and the output as O^T[d, query] =
// V^T[d, :] . P^T[:, query] (A = V^T rows from LDS, B = P^T straight from the score accumulators).
// With 32x32x8 MFMAs a lane then owns ONE query (lane % 32) in every accumulator: softmax row
// statistics are per lane (plus one exchange with lane ^ 32), the rescale of O is one multiply per
// register, and P never goes through LDS.
//
// Key order. MFMA row rho of a score block is key kappa(rho) = 16 ((rho / 4) % 2) + 4 (rho / 8) + rho % 4
// of the block's 32 keys (a permutation), so accumulator register r of lane l holds key 16 (l / 32) + r:
// lane half h owns the 16 consecutive keys [16h, 16h + 16) in register order. The P.V step j (keys
// 16h + 4j + e of lane half h) then takes registers 4j..4j+3 as its B operand unchanged, and its
// A operand (V^T row d, the same 16 keys) is 32 contiguous bytes of one V^T row: 2 ds_read_b128.
//
// No CUDA/HIP spelling here (tools/check_portability.sh): only __host__/__device__.
#pragma once

#include <stdint.h>

#include "mfma_layout.h"
#include "mfma_layout_schedule.h"

namespace zk {
namespace attention_gfx942 {

constexpr int kHeadDim = 128;                // D
constexpr int kGroup = 4;                    // query heads per KV head (ZAYA1: 8 / 2)
constexpr int kQueryBlocks = 2;              // 32-query blocks per tile
constexpr int kWaves = kGroup * kQueryBlocks;  // 8: wave w = head w % 4 of the group, query block w / 4
constexpr int kThreads = kWaves * mfma::kWave;  // 512
constexpr int kQueryTile = 32 * kQueryBlocks;   // 64 query positions (x 4 heads) per workgroup
constexpr int kKeyTile = 64;                 // keys per pipeline step
constexpr int kKeyBlocks = kKeyTile / 32;    // 2 score blocks of 32 keys
constexpr int kDBlocks = kHeadDim / 64;      // 2 K runs of 64 d for the scores
constexpr int kOutBlocks = kHeadDim / 32;    // 4 output blocks of 32 d
constexpr int kKRowBytes = kHeadDim * 2;     // 256: K tile row (one key)
constexpr int kVtRowBytes = kKeyTile * 2;    // 128: V^T tile row (one d)
constexpr int kKTileBytes = kKeyTile * kKRowBytes;    // 16 KB
constexpr int kVtTileBytes = kHeadDim * kVtRowBytes;  // 16 KB
constexpr int kStageBytes = kKTileBytes + kVtTileBytes;  // 32 KB; two stages = 64 KB
constexpr int kLoaderThreads = kThreads / 2;  // waves 0..3 load K, waves 4..7 load V
constexpr int kLoads = 4;                     // 16-byte global loads per loader thread per tile

ZK_LAYOUT_FN int wave_head(int wave) { return wave % kGroup; }
ZK_LAYOUT_FN int wave_query_block(int wave) { return wave / kGroup; }
// Query row (0..63) of the tile that lane `lane` of `wave` owns in every accumulator.
ZK_LAYOUT_FN int query_row(int wave, int lane) { return 32 * wave_query_block(wave) + mfma::m32_b_col(lane); }

// ---- scores ------------------------------------------------------------------------------------
ZK_LAYOUT_FN int key_of_mfma_row(int rho) { return 16 * ((rho / 4) % 2) + 4 * (rho / 8) + rho % 4; }
// Key (0..63 within the tile) of score register r of block b of lane `lane`.
ZK_LAYOUT_FN int score_key(int b, int lane, int r) { return 32 * b + key_of_mfma_row(mfma::m32_c_row(lane, r)); }
// d of element e of MFMA step `step` (0..7) of d block c: router_gfx942::kblock_col, for K and Q alike.
ZK_LAYOUT_FN int score_d(int c, int lane, int step, int e) { return 64 * c + router_gfx942::kblock_col(lane, step, e); }

// K tile [64 keys][128 d] bf16, 256-byte rows of 16 chunks; chunk c of key row `key` lives at chunk
// c ^ k_swizzle(key). A ds_read_b128 phase (8 lanes = MFMA rows 8i..8i+7) reads keys
// 32b + {4i..4i+3} u {16 + 4i..16 + 4i+3} at one chunk: k_swizzle takes 8 distinct values on them
// (key % 4, and bit 4 of the key), so the 8 reads hit 8 distinct 4-bank groups.
ZK_LAYOUT_FN int k_swizzle(int key) { return (key & 3) | ((key >> 2) & 4); }
ZK_LAYOUT_FN int k_offset(int key, int chunk) { return key * kKRowBytes + 16 * (chunk ^ k_swizzle(key)); }
// ds_read_b128 number cc (0..3) of the K run of score block b, d block c of `lane`.
ZK_LAYOUT_FN int k_read_offset(int b, int c, int lane, int cc) {
  return k_offset(32 * b + key_of_mfma_row(mfma::m32_a_row(lane)), 8 * c + 4 * (lane / 32) + cc);
}
// K loader thread v (0..255), load i (0..3): chunk v + 256 i of the tile = key (v + 256 i) / 16,
// chunk v % 16. 16 lanes read one key's 256 contiguous bytes; 8 lanes write 8 chunks of one row.
ZK_LAYOUT_FN int k_load_key(int v, int i) { return (v + kLoaderThreads * i) / 16; }
ZK_LAYOUT_FN int k_load_chunk(int v) { return v % 16; }

// ---- P.V -------------------------------------------------------------------------------------------
// Key (0..63) of element e of P.V step j (0..3) of key block b: the score register 4j + e.
ZK_LAYOUT_FN int pv_key(int b, int lane, int j, int e) { return 32 * b + 16 * (lane / 32) + 4 * j + e; }
// d of output register r of output block db.
ZK_LAYOUT_FN int out_d(int db, int lane, int r) { return 32 * db + mfma::m32_c_row(lane, r); }

// V^T tile [128 d][64 keys] bf16, 128-byte rows of 8 chunks of 8 keys; chunk c of row d at chunk
// c ^ vt_swizzle(d), vt_swizzle(d) = (d ^ (d / 8)) % 8. Reads: 8 lanes = 8 consecutive d (one d / 8)
// at one chunk -> 8 distinct chunks. Writes (below): 16 lanes of a ds_write_b64 phase write one d % 8
// for 8 values of d / 8 and both halves of a chunk -> all 32 banks once.
ZK_LAYOUT_FN int vt_swizzle(int d) { return (d ^ (d >> 3)) & 7; }
ZK_LAYOUT_FN int vt_offset(int d, int chunk) { return d * kVtRowBytes + 16 * (chunk ^ vt_swizzle(d)); }
// ds_read_b128 number rr (0, 1) of the V^T run of output block db, key block b: keys 32b + 16h + 8rr.. +7.
ZK_LAYOUT_FN int vt_read_offset(int db, int b, int lane, int rr) {
  return vt_offset(32 * db + mfma::m32_a_row(lane), 4 * b + 2 * (lane / 32) + rr);
}
// V loader thread v (0..255) loads the 8 d [8 dc, 8 dc + 8) of the 4 keys [4 kq, 4 kq + 4) (4 x 16 bytes),
// transposes them in registers and writes 8 pieces of 8 bytes: d = 8 dc + i, keys 4 kq..4 kq + 3.
ZK_LAYOUT_FN int v_key_quad(int v) { return 2 * (v / 32) + (v / 8) % 2; }
ZK_LAYOUT_FN int v_d_chunk(int v) { return 8 * ((v / 16) % 2) + v % 8; }
ZK_LAYOUT_FN int v_load_key(int v, int j) { return 4 * v_key_quad(v) + j; }
ZK_LAYOUT_FN int vt_write_offset(int v, int i) {
  const int kq = v_key_quad(v);
  return vt_offset(8 * v_d_chunk(v) + i, kq / 2) + 8 * (kq % 2);
}

// ---- the paged cache -----------------------------------------------------------------------------
// Element offset of (position pos, KV head kvh, d = 0) of one sequence in a cache
// [num_pages, page_size, kv_heads, D]: page block_table_row[pos / page_size], slot pos % page_size.
ZK_LAYOUT_FN int64_t kv_offset(int32_t page, int page_size, int kv_heads, int pos, int kvh) {
  return ((int64_t{page} * page_size + pos % page_size) * kv_heads + kvh) * kHeadDim;
}
ZK_LAYOUT_FN int page_slot(int pos, int page_size) { return pos / page_size; }

// ---- schedule --------------------------------------------------------------------------------------
// Work item = (64-query tile of one sequence, KV head): 4 query heads x 64 positions share every K/V
// tile the workgroup loads. Grid = bound x kv_heads, bound = gfx942_schedule::mtile_bound(T, B, 64).
// Logical order: L = kvh * bound + (bound - 1 - t): the tiles of one (sequence, KV head) are adjacent
// (one XCD's L2 holds their shared K/V, see gfx942_schedule::logical_block), and within a KV head the
// last query tiles, which see the most keys under the causal mask, start first (longest first: the
// grid's tail is short tiles).
struct QTileCoord {
  int tile;  // index into the tiles of cu_seqlens_q (locate_mtile)
  int kvh;
};
ZK_LAYOUT_FN QTileCoord qtile_coord(int64_t logical, int bound) {
  return QTileCoord{bound - 1 - static_cast<int>(logical % bound), static_cast<int>(logical / bound)};
}

// Key tiles a query tile visits: keys [0, min(last query position + 1, L)) causal, [0, L) otherwise.
ZK_LAYOUT_FN int key_tiles(int last_query_pos, int seq_len_k, bool causal) {
  const int keys = causal ? (last_query_pos + 1 < seq_len_k ? last_query_pos + 1 : seq_len_k) : seq_len_k;
  return keys <= 0 ? 0 : (keys + kKeyTile - 1) / kKeyTile;
}

}  // namespace attention_gfx942
}  // namespace zk
