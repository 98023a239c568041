// SPDX-License-Identifier: Apache-2.0
// cca_prep_rows.cuh: the index math of cca_prep (common/cca_prep.cuh) as host-callable functions, so that
// tests/test_attention_cpu.py compiles this header with g++ and checks
// the tiling, the sequence lookup and the cache slots against Python. Integer math only; no CUDA/HIP spelling.
//
// Tiling. The packed rows [0, T) are cut into tiles of at most kTileRows rows; nominal tile k starts at row
// k * (kTileRows - 1), moved one row earlier when that row is the SECOND token of its sequence (local index
// 1). So a sequence's tokens 0 and 1 are always in one tile: they are the only rows that read the stored
// conv_state (token 0 reads (u_{-2}, u_{-1}), token 1 reads u_{-1}), and the tile that holds them is the one
// that overwrites the state, after its own barrier. No other CTA reads that state, so the in-place update
// needs no grid-wide ordering. Tiles hold kTileRows - 2 .. kTileRows rows.
#pragma once

#include <stdint.h>

// Host code (the launchers, the CPU tests) compiles this without a device compiler.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define ZK_CCA_FN __host__ __device__ inline
#else
#define ZK_CCA_FN inline
#endif

namespace zk {
namespace cca {

ZK_CCA_FN int tile_stride(int tile_rows) { return tile_rows - 1; }

ZK_CCA_FN int num_tiles(int num_tokens, int tile_rows) {
  const int stride = tile_stride(tile_rows);
  return (num_tokens + stride - 1) / stride;
}

// The sequence b of packed row t: the largest b in [0, batch) with cu_seqlens[b] <= t (the last of several
// equal entries, so empty sequences are skipped). Rows at or past cu_seqlens[batch] map to batch - 1 and
// have a local index >= its length (no sequence: the kernel leaves them alone).
ZK_CCA_FN int sequence_of(const int32_t* cu_seqlens, int batch, int t) {
  int lo = 0, hi = batch - 1;  // answer in [lo, hi]
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu_seqlens[mid] <= t) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// First row of tile k (k = num_tiles gives num_tokens, the end of the last tile).
ZK_CCA_FN int tile_start(int k, int num_tokens, int tile_rows, const int32_t* cu_seqlens, int batch) {
  const int s = k * tile_stride(tile_rows);
  if (s <= 0) return 0;
  if (s >= num_tokens) return num_tokens;
  const int b = sequence_of(cu_seqlens, batch, s);
  return s - cu_seqlens[b] == 1 ? s - 1 : s;
}

// Element offset of the cache row (page, slot) of absolute position pos of a sequence whose block-table row
// is `row`; the row holds kv_heads * head_dim elements.
ZK_CCA_FN int64_t cache_row_offset(const int32_t* row, int page_size, int pos, int row_elems) {
  const int64_t page = row[pos / page_size];
  return (page * page_size + pos % page_size) * row_elems;
}

}  // namespace cca
}  // namespace zk
