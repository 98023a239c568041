// SPDX-License-Identifier: Apache-2.0
// mfma_layout_experts.h: the index math of the gfx942 expert GEMMs (hip/experts_gfx942*.{hip,h}):
// which weight row / token row / K column every lane feeds to v_mfma_f32_32x32x8_bf16, the LDS stage
// layout, the global -> LDS load assignment, the expert schedule (m-tile -> expert segment), the
// logical tile order over the 8 XCDs, the split-K partition and the launch plan. Integer functions
// only, __host__ __device__: the kernels call exactly these, and tests/test_mfma_layout_experts.py
// compiles this header for the host and checks them against AMD's documented MFMA layouts
// (the operand tables of common/mfma_layout.h; CDNA3 ISA guide §7).
//
// Orientation (as the router's): every GEMM is computed transposed, C^T[feature, token] =
// W[feature, :] . A[token, :], so the MFMA's M side is 32 weight rows (A operand) and its N side
// 32 tokens (B operand). Then the lane that owns token l % 32 of an accumulator holds 4 consecutive
// output features per register group (8-byte stores), and every per-token quantity of an epilogue
// (gather index, combine weight, destination row) is one scalar per lane, not per register.
//
// No CUDA/HIP spelling here (tools/check_portability.sh): only __host__/__device__.
#pragma once

#include <stdint.h>

#include "mfma_layout.h"
#include "mfma_layout_schedule.h"

namespace zk {
namespace experts_gfx942 {

// ---- tile geometry -------------------------------------------------------------------------------
// A workgroup is 4 waves (256 threads) and computes a tile of kFeatureTile weight rows x kBm tokens,
// kBm in {64, 128}. Waves are 2 (features) x 2 (tokens); a wave owns 64 features (two 32-row MFMA
// blocks, fn = 0, 1) x kBm / 2 tokens (kBm / 64 32-token blocks, fm). K advances in 64-wide blocks,
// each 8 MFMA steps; the K order inside a block is router_gfx942::kblock_col (lane half h takes the
// 64 contiguous bytes [32h, 32h + 32) of its row), for the weight and the token operand alike.
constexpr int kKBlock = 64;
constexpr int kSteps = kKBlock / mfma::k32K;           // 8 MFMA steps per K block
constexpr int kWaves = 4;
constexpr int kThreads = kWaves * mfma::kWave;         // 256
constexpr int kFeatureTile = 128;                      // weight rows per tile (MFMA M side)
constexpr int kFeatureBlocks = 2;                      // fn: 32-row blocks per wave
constexpr int kRowBytes = kKBlock * 2;                 // 128: one bf16 row of a K block
constexpr int kChunksPerRow = kRowBytes / 16;          // 8 x 16-byte chunks
constexpr int kWeightLoads = kFeatureTile * kChunksPerRow / kThreads;  // 4 chunk loads per thread
constexpr int kMaxSplit = 16;
constexpr int kMinKBlocksPerSplit = 2;                 // a split slice still double-buffers

ZK_LAYOUT_FN int token_blocks(int bm) { return bm / 64; }                        // fm count: 1 or 2
ZK_LAYOUT_FN int acc_regs(int bm) { return kFeatureBlocks * token_blocks(bm) * mfma::k32AccRegs; }
ZK_LAYOUT_FN int token_loads(int bm) { return bm * kChunksPerRow / kThreads; }  // 2 or 4 per thread
ZK_LAYOUT_FN int stage_rows(int bm) { return kFeatureTile + bm; }
ZK_LAYOUT_FN int stage_bytes(int bm) { return stage_rows(bm) * kRowBytes; }       // 24 KB or 32 KB
ZK_LAYOUT_FN int lds_bytes(int bm) { return 2 * stage_bytes(bm); }               // double buffered

// Output features per tile: 128 for a plain GEMM; 64 for the SwiGLU fc1, whose tile holds the 64 gate
// rows [64 nt, 64 nt + 64) and the 64 matching up rows [F + 64 nt, ...) so that each lane ends up
// with gate and up of the same (token, feature) in two accumulators.
ZK_LAYOUT_FN int features_per_tile(bool swiglu) { return swiglu ? kFeatureTile / 2 : kFeatureTile; }

ZK_LAYOUT_FN int wave_feature_half(int wave) { return wave % 2; }  // wf
ZK_LAYOUT_FN int wave_token_half(int wave) { return wave / 2; }    // wt

// Stage row (0..127) of the weight operand that lane `lane` of `wave` feeds as MFMA row lane % 32 of
// its feature block fn. Plain: wave wf owns rows [64 wf, 64 wf + 64). SwiGLU: block fn = 0 is the gate
// half, fn = 1 the up half; wave wf owns the 32 rows 32 wf of each, i.e. the same 32 features twice.
ZK_LAYOUT_FN int weight_stage_row(int wave, int fn, int lane, bool swiglu) {
  const int wf = wave_feature_half(wave);
  return (swiglu ? 64 * fn + 32 * wf : 64 * wf + 32 * fn) + mfma::m32_a_row(lane);
}

// Row of the expert's weight matrix ([N, K] plain, [2F, K] SwiGLU) held by stage row `rho` of n-tile nt.
ZK_LAYOUT_FN int64_t weight_row(int nt, int rho, bool swiglu, int ffn) {
  if (!swiglu) return int64_t{kFeatureTile} * nt + rho;
  return rho < 64 ? int64_t{64} * nt + rho : int64_t{ffn} + int64_t{64} * nt + (rho - 64);
}

// Token row of the tile (0..bm-1) that lane `lane` of `wave` feeds as MFMA column lane % 32 of its
// token block fm; also the token of every accumulator register of that lane and block.
ZK_LAYOUT_FN int token_tile_row(int wave, int fm, int lane, int bm) {
  return (bm / 2) * wave_token_half(wave) + 32 * fm + mfma::m32_b_col(lane);
}

// Output feature of accumulator register r of feature block fn (plain: column of c; SwiGLU: column of
// the activation, the same for fn = 0 (gate) and fn = 1 (up)). Registers 4g..4g+3 are 4 consecutive
// features (mfma::m32_c_row), stored as one 8-byte piece.
ZK_LAYOUT_FN int64_t acc_feature(int nt, int wave, int fn, int lane, int r, bool swiglu) {
  const int wf = wave_feature_half(wave);
  if (swiglu) return int64_t{64} * nt + 32 * wf + mfma::m32_c_row(lane, r);
  return int64_t{kFeatureTile} * nt + 64 * wf + 32 * fn + mfma::m32_c_row(lane, r);
}

// ---- LDS ----------------------------------------------------------------------------------------
// One stage = [128 weight rows | bm token rows] x 128 bytes (one 64-wide K block), stage row rho at
// byte rho * 128, its 16-byte chunk c at chunk c ^ (rho % 8) (router_gfx942::swizzled_chunk). Operand
// reads are ds_read_b128 whose 8-lane phases are 8 consecutive MFMA rows (= 8 consecutive stage rows)
// at the same chunk: 8 distinct 4-bank groups, conflict-free. Loads write 8 consecutive chunks of one
// row per phase: a permutation of one row's 8 chunks, conflict-free. (Both checked by the tests.)
ZK_LAYOUT_FN int stage_offset(int row, int chunk) { return router_gfx942::lds_offset(row, kRowBytes, chunk); }
// Chunk of the lane's c-th ds_read_b128 (c = 0..3) of its K run: the run is chunks [4h, 4h + 4).
ZK_LAYOUT_FN int run_chunk(int lane, int c) { return 4 * (lane / 32) + c; }
ZK_LAYOUT_FN int weight_read_offset(int wave, int fn, int lane, int c, bool swiglu) {
  return stage_offset(weight_stage_row(wave, fn, lane, swiglu), run_chunk(lane, c));
}
ZK_LAYOUT_FN int token_read_offset(int wave, int fm, int lane, int c, int bm) {
  return stage_offset(kFeatureTile + token_tile_row(wave, fm, lane, bm), run_chunk(lane, c));
}

// Global -> LDS: load i of thread tid moves chunk q = tid + 256 i of the stage (row q / 8, chunk q % 8):
// loads 0..3 are the 128 weight rows, loads 4.. the token rows. 8 consecutive lanes read one row's
// 128 contiguous bytes (coalesced) and write it as one conflict-free phase.
ZK_LAYOUT_FN int load_row(int tid, int i) { return (tid + kThreads * i) / kChunksPerRow; }
ZK_LAYOUT_FN int load_chunk(int tid) { return tid % kChunksPerRow; }

// Split-K partial of one (tile, slice): the thread's accumulator registers in register order, 16 bytes
// per thread per group of 4: float index of group q of thread tid inside the slot (coalesced stores).
ZK_LAYOUT_FN int partial_index(int tid, int q) { return 4 * (q * kThreads + tid); }

// ---- the expert schedule (no host sync: read on the device from expert_offsets) ---------------------
// m-tiles over segments of rows: common/mfma_layout_schedule.h. For grouped_gemm the segments are
// [0, off[0]) (zero rows), the E experts, [off[E], M) (zero rows): with_outer; for moe_mlp the E experts.
using gfx942_schedule::locate_mtile;
using gfx942_schedule::MTile;
using gfx942_schedule::mtile_bound;

// moe_mlp's rows are moe_align's padded segments (capacity = T k + E (block_m - 1) rows). When bm is a
// multiple of block_m, expert e's padded segment ceil(n_e / block_m) block_m has exactly ceil(n_e / bm)
// m-tiles (ceil(ceil(x / a) / b) = ceil(x / ab)), so the bound only needs the T k real rows: at decode
// (T = 1) one m-tile instead of ~capacity / bm. Otherwise the padded rows count.
ZK_LAYOUT_FN int64_t moe_bound_rows(int64_t pairs, int64_t capacity, int block_m, int bm) {
  return (block_m >= 1 && bm % block_m == 0) ? pairs : capacity;
}

// ---- logical tile order and XCDs --------------------------------------------------------------------
// Logical tile L = (nt * split + s) * mtiles + mt: m-tiles vary fastest, so consecutive L are the
// m-tiles of one expert (segments are contiguous along M) reading the same 128 weight rows of the same
// K slice. The hardware sends workgroup b to XCD b % 8; L = xcd_remap(b) gives each XCD a contiguous
// range of L, so the tiles that share an expert's weight slice run on one XCD and share its 4 MB L2
// instead of each XCD fetching the slice (round robin would spread 8 consecutive tiles over 8 L2s).
struct TileCoord {
  int mtile;
  int ntile;
  int split;
};

ZK_LAYOUT_FN TileCoord tile_coord(int64_t logical, int mtiles, int split) {
  const int64_t rest = logical / mtiles;
  return TileCoord{static_cast<int>(logical % mtiles), static_cast<int>(rest / split), static_cast<int>(rest % split)};
}

ZK_LAYOUT_FN int64_t logical_tile(int64_t block, int64_t grid) { return gfx942_schedule::logical_block(block, grid); }

// Split-K: slice s of `split` takes K blocks [begin(s), begin(s + 1)): balanced, each block exactly once.
ZK_LAYOUT_FN int split_kblock_begin(int kblocks, int split, int s) {
  return static_cast<int>(int64_t{kblocks} * s / split);
}

// ---- launch plan --------------------------------------------------------------------------------
// Regimes (MI300X: 304 CUs; one workgroup per CU at 48 / 64 KB of LDS):
//   prefill: bm = 128 when full 128-row tiles alone give every CU one (T = 16384, N = 4096: 4096 tiles):
//            2 x 2 32x32 accumulators per wave, 32 MFMAs per wave per 32 KB stage.
//   small:   bm = 64 below that (fewer padded rows per tile, twice the tiles).
//   decode:  when even bm = 64 tiles leave CUs idle, K is split over `split` workgroups per tile (a power
//            of two, <= 16, each slice >= 2 K blocks, tiles x split <= CUs: one wave of workgroups), the
//            last one to finish a tile sums the fp32 partials. T = 1 (ZAYA1, 16 experts): fc1 (2F = 4096,
//            K = 2048) 32 tiles x split 8 = 256 workgroups each streaming 64 KB of W1; fc2 (N = 2048,
//            K = 2048) 16 tiles x 16 = 256 workgroups of 32 KB of W2: all CUs pull weights, where the
//            unsplit grid would have 32 / 16 CUs read 25 MB.
// bm_fixed != 0 forces bm (moe_mlp picks bm = block_m when block_m is 64 or 128, for the tight bound).
// force (params.h ExpertsRegime, as an int): 0 by shape; 1 ("small") the split-K path whenever K has
// >= 2 x kMinKBlocksPerSplit blocks, at least 2 slices, with bm = 64 unless fixed; 2 ("tiled") no split.
// Tests force both so that every shape runs both kernels.
struct GemmPlan {
  int bm;
  int split;
  int mtiles;
  int ntiles;
  int kblocks;
  int64_t grid;
};

ZK_LAYOUT_FN GemmPlan gemm_plan(int64_t rows, int segments, int features, bool swiglu, int k, int cus, int bm_fixed,
                                int force) {
  const int ntiles = (features + features_per_tile(swiglu) - 1) / features_per_tile(swiglu);
  const int kblocks = (k + kKBlock - 1) / kKBlock;
  int bm = bm_fixed;
  if (bm == 0) bm = force == 0 && rows / 128 * ntiles >= cus ? 128 : 64;
  const int mtiles = static_cast<int>(mtile_bound(rows, segments, bm));
  int split = 1;
  while (force != 2 && split < kMaxSplit && kblocks >= kMinKBlocksPerSplit * split * 2 &&
         (int64_t{mtiles} * ntiles * split * 2 <= cus || (force == 1 && split == 1))) {
    split *= 2;
  }
  return GemmPlan{bm, split, mtiles, ntiles, kblocks, int64_t{mtiles} * ntiles * split};
}

// Workspace of one split GEMM: the arrival counters (one uint32 per tile, zeroed before the launch and
// reset by each tile's finisher) then the fp32 partials, one slot of acc_regs(bm) x 256 floats per
// (tile, slice). 0 without a split.
constexpr int64_t kWorkspaceAlign = 256;
ZK_LAYOUT_FN int64_t align_up(int64_t v) { return (v + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }
ZK_LAYOUT_FN int64_t counters_bytes(const GemmPlan& p) {
  return p.split > 1 ? align_up(int64_t{p.mtiles} * p.ntiles * 4) : 0;
}
ZK_LAYOUT_FN int64_t partials_bytes(const GemmPlan& p) {
  return p.split > 1 ? align_up(p.grid * acc_regs(p.bm) * kThreads * 4) : 0;
}

}  // namespace experts_gfx942
}  // namespace zk
