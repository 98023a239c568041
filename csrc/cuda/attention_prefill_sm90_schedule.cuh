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
// shortest of the next. Virtual tiles list the token tiles longest-first as far as the device can
// tell without a sort (rank-major up to 32 sequences, else sequence by sequence, each from its last
// token tile), each for the KV heads in turn. Mapping v to a tile needs the per-sequence tile counts,
// known only on the device: each warp that needs the tile derives it from cu_seqlens_q itself (no
// shared-memory hand-off), and since a CTA's v only grows, its walk resumes where it stopped.
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

// Where a warp's walk through the virtual tiles stands (it only moves forward: a CTA's v only grows).
struct PrefillCursor {
  int32_t first_seq = 0;     // sequence-major: sequences [0, first_seq) hold `tiles_before` token tiles
  int32_t tiles_before = 0;  // (rank-major: token tiles of ranks [0, rank))
  int32_t rank = 0;          // rank-major: the current rank (0 = every sequence's last token tile)
};

ZK_DEVICE void prefill_fill_tile(const AttentionPrefillParams& p, int b, int32_t index, int32_t kv_head,
                                 PrefillTile& tile) {
  const int32_t seq_start = p.cu_seqlens_q[b];
  const int32_t seq_tokens = p.cu_seqlens_q[b + 1] - seq_start;
  const int32_t seq_len_k = p.seq_lens_k[b];
  tile.batch_index = b;
  tile.kv_head = kv_head;
  tile.token0 = seq_start + index * kPrefillTileTokens;
  tile.tokens = min(kPrefillTileTokens, seq_tokens - index * kPrefillTileTokens);
  tile.pos0 = seq_len_k - seq_tokens + index * kPrefillTileTokens;
  tile.seq_len_k = seq_len_k;
  tile.blocks = prefill_tile_blocks(tile.pos0, tile.tokens, seq_len_k, p.causal != 0);
}

// Up to 32 sequences (lane l holds sequence l's tile count): rank-major order, i.e. every sequence's
// last token tile, then every sequence's second last, ... Under causal masking a sequence's tiles
// shrink from its last one down, so this is longest-first across the batch for uniform lengths (the
// sequence-major order below balances 16x1024 to 1.46x the mean CTA's work and 4x4096 to 1.67x with
// the snake; rank-major: 1.03x and 1.00x; 1x16384 1.005x either way; Python model of this scheduler).
// The walk jumps over ranks in spans where the set of sequences with tiles left stays the same.
ZK_DEVICE bool prefill_rank_major(const AttentionPrefillParams& p, int64_t slot, PrefillCursor& cursor, int lane,
                                  int32_t& b, int32_t& index) {
  int32_t tiles = 0;
  if (lane < p.batch) tiles = (max(p.cu_seqlens_q[lane + 1] - p.cu_seqlens_q[lane], 0) + kPrefillTileTokens - 1) /
                               kPrefillTileTokens;
  while (true) {
    const bool active = tiles > cursor.rank;
    const uint32_t members = __ballot_sync(0xffffffffu, active);
    const int32_t count = __popc(members);
    if (count == 0) return false;
    int32_t span_end = active ? tiles : INT32_MAX;  // the rank at which the first active sequence runs out
#pragma unroll
    for (int shift = 16; shift > 0; shift >>= 1) span_end = min(span_end, __shfl_xor_sync(0xffffffffu, span_end, shift));
    const int64_t span = static_cast<int64_t>(count) * (span_end - cursor.rank);
    if (slot < cursor.tiles_before + span) {
      const int64_t offset = slot - cursor.tiles_before;
      const int32_t rank = cursor.rank + static_cast<int32_t>(offset / count);
      const int32_t member = static_cast<int32_t>(offset % count);
      // The member-th active lane: the one with `member` active lanes below it.
      const bool is_it = active && __popc(members & ((1u << lane) - 1u)) == member;
      const int src = __ffs(__ballot_sync(0xffffffffu, is_it)) - 1;
      b = src;
      index = __shfl_sync(0xffffffffu, tiles, src) - 1 - rank;
      return true;
    }
    cursor.tiles_before += static_cast<int32_t>(span);
    cursor.rank = span_end;
  }
}

// Any batch size: sequence-major order (sequences in turn, each from its last token tile to its first),
// the warp scanning cu_seqlens_q 32 sequences at a time with a prefix sum, resuming where it stopped.
ZK_DEVICE bool prefill_sequence_major(const AttentionPrefillParams& p, int64_t slot, PrefillCursor& cursor, int lane,
                                      int32_t& b, int32_t& index) {
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
      b = cursor.first_seq + src;
      index = seq_tiles - 1 - static_cast<int32_t>(slot - cursor.tiles_before - before);
      return true;
    }
    cursor.tiles_before += group_tiles;
    cursor.first_seq += 32;
  }
  return false;
}

// The tile of this CTA's k-th turn, computed by the whole warp (every lane gets the same answer);
// false once the virtual index is past the last tile. Virtual tile v = token-tile slot * Hkv + KV head.
ZK_DEVICE bool prefill_next_tile(const AttentionPrefillParams& p, int k, PrefillCursor& cursor, int lane,
                                 PrefillTile& tile) {
  const int grid = static_cast<int>(gridDim.x), cta = static_cast<int>(blockIdx.x);
  const int64_t virtual_tile = static_cast<int64_t>(k) * grid + ((k & 1) ? grid - 1 - cta : cta);
  const int64_t slot = virtual_tile / p.cache.kv_heads;
  int32_t b = 0, index = 0;
  const bool found = p.batch <= 32 ? prefill_rank_major(p, slot, cursor, lane, b, index)
                                   : prefill_sequence_major(p, slot, cursor, lane, b, index);
  if (found) prefill_fill_tile(p, b, index, static_cast<int32_t>(virtual_tile % p.cache.kv_heads), tile);
  return found;
}

}  // namespace sm90
}  // namespace zk
