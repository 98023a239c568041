// SPDX-License-Identifier: Apache-2.0
// attention_prefill_sm90_schedule.cuh: the tile geometry and the persistent scheduler of the sm_90a
// prefill attention.
//
// A tile is (sequence b, KV head j, 32 consecutive query tokens of b) x the 4 query heads of KV head j:
// 128 rows of the Q tile, row = 4 * token + head (GQA packed into M). Why pack the heads rather than
// take 128 tokens of one head: every K/V block is then loaded once for the 4 heads that read it, so
// the K/V traffic from L2 is 16 KB per 1 MFLOP of the tile instead of 64 KB; short sequences (chunks
// of 1..17 tokens, the varlen batches of serving) fill 4x more of the tile's rows (17 tokens: 68 of
// 128 rows, against 17); and the causal diagonal costs the same: either way a row wastes on average
// half of one 128-key block (64 keys) on masked logits. 8 query heads give only 2 KV heads, so the
// tile count is 2 x sum_b ceil(n_b / 32): 1024 tiles at 16x1024, 4x4096 and 1x16384 alike, 7.8 per
// SM of the H200's 132 (so the tail of the last wave is at most ~1/8 of the run).
//
// Persistent grid (one CTA per SM): CTA c takes virtual tiles v_k = k * G + (k even ? c : G - 1 - c),
// k = 0, 1, ...: a snake, so that a CTA given one of the longest tiles of a round gets one of the
// shortest of the next. Virtual tiles enumerate sequences in order, and within a sequence the token
// tiles from the LAST (the longest under causal masking) to the first, each for the KV heads in turn:
// for 1x16384 that is exactly longest-first; the snake then balances the CTAs to within one tile's
// difference per pair of rounds (static round-robin without the snake: ~27% imbalance at 1x16384).
// Mapping v to a sequence needs the per-sequence tile counts, known only on the device: each warp
// that needs the tile scans cu_seqlens_q 32 sequences at a time with a warp prefix sum; since a CTA's
// v only grows, the scan resumes where it stopped (B / 32 steps per CTA over the whole kernel).
#pragma once

#include <stdint.h>

#include "../common/compat.h"
#include "../common/params.h"

namespace zk {
namespace sm90 {

constexpr int kPrefillHeadDim = 128;    // D: two 64-element (128-byte) swizzle halves
constexpr int kPrefillGroup = 4;        // query heads per KV head (ZAYA1: 8 over 2)
constexpr int kPrefillConsumers = 2;    // consumer warpgroups, 64 rows (16 tokens x 4 heads) each
constexpr int kPrefillTileTokens = 16 * kPrefillConsumers;             // 32 tokens per tile
constexpr int kPrefillRows = kPrefillTileTokens * kPrefillGroup;       // 128 rows (wgmma M = 2 x 64)
constexpr int kPrefillBlockKeys = 128;  // keys per K/V block (wgmma N of S = Q K^T)
static_assert(kPrefillRows == 64 * kPrefillConsumers, "one 64-row wgmma per consumer warpgroup");

struct PrefillTile {
  int32_t batch_index;  // b
  int32_t kv_head;      // j
  int32_t token0;       // first query row in q / out
  int32_t tokens;       // valid query tokens in the tile, 1..32
  int32_t pos0;         // position (key index) of the tile's first token
  int32_t seq_len_k;    // keys of the sequence
  int32_t blocks;       // K/V blocks the tile reads: [0, blocks), processed from the last down
};

// Keys [0, blocks * 128) cover what any query of the tile may see.
ZK_HOST_DEVICE int32_t prefill_tile_blocks(int32_t pos0, int32_t tokens, int32_t seq_len_k, bool causal) {
  const int32_t key_blocks = seq_len_k > 0 ? (seq_len_k + kPrefillBlockKeys - 1) / kPrefillBlockKeys : 0;
  if (!causal) return key_blocks;
  const int32_t last = pos0 + tokens - 1;  // < 0 only for n_b > seq_len_k, a caller error
  if (last < 0) return 0;
  const int32_t visible = last / kPrefillBlockKeys + 1;
  return visible < key_blocks ? visible : key_blocks;
}

// Upper bound of the tile count for a launch (host): sum_b ceil(n_b / 32) <= (T + 31 B) / 32.
ZK_HOST_DEVICE int64_t prefill_tile_bound(int64_t num_tokens, int64_t batch, int64_t kv_heads) {
  return (num_tokens + (kPrefillTileTokens - 1) * batch + kPrefillTileTokens - 1) / kPrefillTileTokens * kv_heads;
}

// Where a warp's scan of cu_seqlens_q stands: sequences [0, first_seq) hold `tiles_before` token tiles.
struct PrefillCursor {
  int32_t first_seq = 0;
  int32_t tiles_before = 0;
};

// The tile of this CTA's k-th turn, computed by the whole warp (every lane gets the same answer);
// false once the virtual index is past the last tile.
ZK_DEVICE bool prefill_next_tile(const AttentionPrefillParams& p, int k, PrefillCursor& cursor, int lane,
                                 PrefillTile& tile) {
  const int grid = static_cast<int>(gridDim.x), cta = static_cast<int>(blockIdx.x);
  const int64_t virtual_tile = static_cast<int64_t>(k) * grid + ((k & 1) ? grid - 1 - cta : cta);
  const int kv_heads = p.cache.kv_heads;
  const int64_t slot = virtual_tile / kv_heads;  // token tile over all sequences
  while (cursor.first_seq < p.batch) {
    const int seq = cursor.first_seq + lane;
    int32_t tokens = 0;
    if (seq < p.batch) tokens = max(p.cu_seqlens_q[seq + 1] - p.cu_seqlens_q[seq], 0);
    const int32_t tiles = (tokens + kPrefillTileTokens - 1) / kPrefillTileTokens;
    int32_t inclusive = tiles;
#pragma unroll
    for (int shift = 1; shift < 32; shift <<= 1) {
      const int32_t other = __shfl_up_sync(0xffffffffu, inclusive, shift);
      if (lane >= shift) inclusive += other;
    }
    const int32_t group_tiles = __shfl_sync(0xffffffffu, inclusive, 31);
    if (slot < static_cast<int64_t>(cursor.tiles_before) + group_tiles) {
      const uint32_t hit = __ballot_sync(0xffffffffu, slot < static_cast<int64_t>(cursor.tiles_before) + inclusive);
      const int src = __ffs(hit) - 1;
      const int32_t before = __shfl_sync(0xffffffffu, inclusive - tiles, src);
      const int32_t seq_tiles = __shfl_sync(0xffffffffu, tiles, src);
      const int b = cursor.first_seq + src;
      const int32_t rank = static_cast<int32_t>(slot - cursor.tiles_before - before);  // 0: the last tile
      const int32_t index = seq_tiles - 1 - rank;
      const int32_t seq_start = p.cu_seqlens_q[b];
      const int32_t seq_tokens = p.cu_seqlens_q[b + 1] - seq_start;
      const int32_t seq_len_k = p.seq_lens_k[b];
      tile.batch_index = b;
      tile.kv_head = static_cast<int32_t>(virtual_tile % kv_heads);
      tile.token0 = seq_start + index * kPrefillTileTokens;
      tile.tokens = min(kPrefillTileTokens, seq_tokens - index * kPrefillTileTokens);
      tile.pos0 = seq_len_k - seq_tokens + index * kPrefillTileTokens;
      tile.seq_len_k = seq_len_k;
      tile.blocks = prefill_tile_blocks(tile.pos0, tile.tokens, seq_len_k, p.causal != 0);
      return true;
    }
    cursor.tiles_before += group_tiles;
    cursor.first_seq += 32;
  }
  return false;
}

}  // namespace sm90
}  // namespace zk
