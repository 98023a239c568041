// SPDX-License-Identifier: Apache-2.0
// zaya_router_gfx942.hip: zaya::zaya_router on MI300X (gfx942, CDNA3, wave64): the whole ZAYA1 router
// (down-projection, EDA, RMSNorm, two exact-GELU layers, logits, fp32 softmax, biased top-1) in one
// kernel, numerics of reference.zaya_router (see common/zaya_router_math.cuh). Compiled and checked at
// the ISA level only (tools/compile_hip.sh); no MI300X has run it (DESIGN.md §5).
//
// ---- Design ----------------------------------------------------------------------------------------
// Orientation. Every GEMM is computed transposed, D^T[feature, token] = W[feature, :] . act[token, :],
// with v_mfma_f32_32x32x8_bf16: A = weight rows (features on M), B = activations (tokens on N). Then
//   * a lane's A operand is 4 consecutive k of ONE weight row, so weights go global -> VGPR directly,
//     16-byte loads, no LDS: a wave owns its rows, nothing is shared between waves;
//   * the accumulator of a lane is one token x 16 features (4 runs of 4 consecutive features), which
//     is exactly what the next layer's B operand wants for that token, so the activation tile moves
//     between layers as [token][feature] bf16 rows (one LDS write, 8 B per lane per run);
//   * the K order inside a 64-wide block is permuted (router_gfx942::kblock_col): lane half h takes
//     columns [32h, 32h+32), so every operand is ONE contiguous 64-byte run per lane and block.
// Workgroup = 8 waves (512 threads) x 32 kNT tokens. Wave w computes output features [32w, 32w+32)
// of the down-projection, fc1 and fc2 (one 32-row M tile, kNT N tiles: 16 kNT accumulators per lane).
// The logits (E' <= 32 routes = one M tile) are split over K: wave w < 4 kNT does N tile w % kNT,
// K quarter w / kNT (64 features), and the 4 partial [32 x 32] tiles meet in LDS, summed in a fixed
// order by 4 lanes per token that run route_top1<4, 8>.
//
// Pipeline of the down-projection (64-wide K blocks, one barrier each): W_down runs requested 3
// blocks ahead into a 4-slot register ring (64 VGPRs; an L2 hit is ~250-500 clk, a block is ~500-1000
// clk of MFMA per SIMD), x requested 4 blocks ahead into 2 register slots (non-temporal, 8 kNT bytes
// per thread), written 2 blocks ahead into a 3-stage LDS ring, its B runs read from LDS 1 block ahead.
// The loop body is 4 whole blocks (fixed register names: a rolled loop would copy in-flight load
// targets and each copy costs an s_waitcnt vmcnt(0)), every prefetch is unconditional (clamped to
// the last block past the end), and a sched_barrier keeps each block's W_down requests ahead of its x
// write (vmcnt is in order): in the asm the loop's waits are vmcnt(9..14), one vmcnt(5), never 0.
// MLP: the wave's 32 rows of fc1 (16 KB = 64 VGPRs, 4 K blocks) are requested as soon as r is known,
// so they land during the norm; each fc1 slot is refilled with the same K block of fc2 as soon as it is
// consumed, and the out_w block of the logits is requested at the start of fc2: weights stream under
// the MFMAs of the previous layer.
//
// LDS (one static array of 32 kNT x 512 B; 64 KiB per CU on CDNA3):
//   kNT = 2: 32768 B = activation tile [64 tokens][256 bf16] (n, then h1, then h2), which also holds,
//            at other times, the 3 x stages [3][64][64 bf16] = 24576 B (down-projection), the row sums
//            of squares [8 waves][64] fp32 = 2048 B, and the partial logits [4][64][32] fp32 = 32768 B.
//            32 KiB leaves room for a second workgroup per CU wherever registers allow it.
//   kNT = 1: 16384 B, the same with 32 tokens (x stages 12288 B; + the 4-byte split flag, last word).
// Every tile has 128- or 512-byte rows of 16-byte chunks, chunk c stored at c ^ (row % 8): the 8 lanes
// of each ds_read_b128 / ds_write_b128 phase (8 consecutive tokens, same chunk) hit 8 distinct 4-bank
// groups of the 32 banks, i.e. conflict-free B-operand reads with no padding; the 8-byte activation
// writes are 2-way conflicted (tokens t, t+8 of a 16-lane ds_write_b64 phase), 1/8 of the traffic.
// (tests/test_mfma_layout.py simulates every one of these accesses.)
//
// Variants (router_gfx942::router_plan in common/mfma_layout.h; ZayaRouterParams::variant, the CUDA
// host's cluster/tile choice at T = 2048, does not apply to this GPU and is ignored):
//   kNT = 2, no split   when ceil(T/64) >= CUs (T > 19392 on a 304-CU MI300X): weights re-read from
//                        L2 once per 64 tokens: 1.27 MB / (64 tokens x 650 clk/token at full MFMA rate)
//                        ~ 31 B/clk per CU, half of what a CU draws from L2; x (4 KB/token) read once.
//                        T = 65536: 1024 workgroups, 87 GFLOP (~67 us at 1.3 PFLOP/s) vs 256 MB of x.
//   kNT = 1, no split   when 32-token tiles are plentiful: at most ~62 B/clk of weights per CU.
//   kNT = 1, split-K    when tiles are few (decode, small prefill chunks): `split` workgroups per tile,
//                        each a K slice of W_down (1 MB / split: spreads the weight read over many CUs),
//                        fp32 partials [32][256] to a workspace slot, then one agent-scope release
//                        + atomic arrival count per workgroup; the LAST workgroup of the tile (no
//                        spin-waiting, so no co-residency assumption, no deadlock) acquires, sums the
//                        partials in slot order (deterministic, whichever workgroup finishes) and runs
//                        the epilogue + MLP. The split
//                        minimises W_down/split + (split-1) x valid tokens x 1 KB on the tile's
//                        critical path: T = 1 -> 32 workgroups of one 64-wide K block each; T = 32 -> 4;
//                        T = 4096 -> 2 (128 tiles x 2 = 256 workgroups).
// XCDs: MI300X dispatches workgroup b to XCD b % 8, each XCD with its own 4 MB L2. Blocks are renamed
// (router_gfx942::xcd_remap) so consecutive logical blocks share an XCD, and split workgroups are
// numbered slice-major: the workgroups that read the same W_down K slice run on the same XCD and
// share one L2 copy of it (each XCD caches ~1/8 of W_down instead of all of it); in the decode case the
// 32 slices still spread over all 8 XCDs, so 8 L2s pull W_down from HBM in parallel.
// Split launches also pre-touch the 256-272 KB of fc1/fc2/out_w at kernel start (tile 0's workgroups, one
// 4-byte load per 64-byte line between them: kWarmLoads loads per thread cover all of them at the
// smallest split, 2), so the finisher's MLP reads hit the Infinity Cache instead of waiting on HBM after
// the down-projection.
//
// Workspace (split only, zaya_router_workspace_bytes): split x tiles partial slots of 32 KB (at most
// kMaxSplitSlots, 10 MB), then one uint32 arrival counter per tile, allocated by the host launcher
// through torch's caching allocator, so it is stream-ordered: two launches in flight at once (two
// streams, parallel graph branches) never share it. The launch clears the counters with a
// hipMemsetAsync on its stream before the kernel (a captured graph replays the memset too), so no
// kernel has to leave them zero and an aborted launch cannot poison a later one.
//
// Resources (upstream LLVM 19; AMD's fork allocates differently, re-check on MI300X):
//   <2, no split> 191 VGPR, 0 AGPR, 66 SGPR, 32768 B LDS -> 2 waves/SIMD = one 8-wave workgroup per CU
//   <1, no split> 149 VGPR, 0 AGPR, 66 SGPR, 16384 B LDS -> 3 waves/SIMD = one workgroup per CU
//   <1, split>    160 VGPR, 0 AGPR, 94 SGPR, 16384 B LDS -> 3 waves/SIMD = one workgroup per CU
// The peaks are the MLP (64 VGPRs of weight ring + kNT x 32 of B runs and accumulators) and the
// down-projection loop (64 ring + kNT x 48). Capping kNT = 1 at 128 VGPRs (two workgroups per CU)
// spilled 19-35 VGPRs, so it is not done.
// Known costs to measure first on hardware: (1) exact GELU: gelu_erf (common/zaya_router_math.cuh, an
// erfc fit: ~19 VALU ops with one rcp and one exp2, no branch) is ~10k VALU ops per token for the 512
// GELUs next to ~650 CU-cycles of MFMA, and it does not interleave with the MFMAs inside a wave; (2) the
// weight loads are 32 rows per
// instruction with power-of-two row strides (4 KB / 512 B), i.e. 32 vL1D lines in one of its 4 sets
// per global_load_dwordx4.
#include <type_traits>

#include "../common/launch.h"
#include "zaya_router_gfx942_epilogue.h"

namespace zk {
namespace gfx942 {

constexpr int kXcds = 8;           // MI300X; the remap is a bijection for any count
constexpr int kDefaultCus = 304;   // MI300X, if the device query fails
// MLP pre-touch: 64-byte lines of fc1_w | fc2_w | out_w (E' <= 32), and the loads per thread that
// cover them with the fewest workgroups a split tile has (split >= 2): ceil(4352 / (2 x 512)) = 5.
constexpr int kMlpLines = 2 * (kWidth * kWidth * 2 / 64) + kRouterMaxRoutes * (kWidth * 2 / 64);
constexpr int kWarmLoads = (kMlpLines + 2 * kThreads - 1) / (2 * kThreads);
constexpr int kXStages = 3;        // LDS stages of x: written 2 blocks ahead, read 1 block ahead
constexpr int kWRing = 4;          // register ring of W_down runs: requested 3 blocks ahead

using f32x4 = float __attribute__((ext_vector_type(4)));

// Line `i` (64 bytes) of fc1_w | fc2_w | out_w, concatenated: one 4-byte load brings it into the
// Infinity Cache (and this XCD's L2).
ZK_DEVICE uint32_t touch_mlp_line(const ZayaRouterParams& p, int i) {
  constexpr int kFcLines = kWidth * kWidth * 2 / 64;
  const uint16_t* base = i < kFcLines ? p.fc1_w : (i < 2 * kFcLines ? p.fc2_w : p.out_w);
  const int line = i < kFcLines ? i : (i < 2 * kFcLines ? i - kFcLines : i - 2 * kFcLines);
  return *reinterpret_cast<const uint32_t*>(base + 32 * line);
}

template <int kNT, bool kSplit>
__global__ void __launch_bounds__(kThreads)
    zaya_router_gfx942_kernel(const ZayaRouterParams p, int64_t tiles, int split, uint32_t* arrivals) {
  constexpr int kTokens = kTokensPerNTile * kNT;
  constexpr int kLdsBytes = kTokens * router_gfx942::kActRowBytes;
  constexpr int kStageBytes = kTokens * router_gfx942::kXRowBytes;
  static_assert(kXStages * kStageBytes <= kLdsBytes, "the x stages overlay the activation tile");
  static_assert(kWaves * kTokens * 4 + 4 <= kLdsBytes, "row sums of squares + arrival flag overlay it too");
  static_assert(kLogitQuarters * kTokens * router_gfx942::kLogitRowBytes == kLdsBytes, "partial logits fill it");
  static_assert(kLogitQuarters * kNT <= kWaves, "one logit part per wave");
  __shared__ __attribute__((aligned(16))) uint8_t smem[kLdsBytes];
  float* sum_squares = reinterpret_cast<float*>(smem);              // [kWaves][kTokens]
  int* arrival = reinterpret_cast<int*>(smem + kLdsBytes - 4);      // split: arrival rank

  const int tid = static_cast<int>(threadIdx.x);
  const int wave = tid / 64, lane = tid % 64, t = router_gfx942::acc_token(lane), h = lane / 32;
  const int64_t logical = router_gfx942::xcd_remap(blockIdx.x, gridDim.x, kXcds);
  const int64_t tile = kSplit ? logical % tiles : logical;
  const int part = kSplit ? static_cast<int>(logical / tiles) : 0;
  const int64_t tok0 = tile * kTokens;
  const int valid = static_cast<int>(p.num_tokens - tok0 < kTokens ? p.num_tokens - tok0 : kTokens);
  const int hidden = p.hidden;
  const int kblocks = hidden / kKBlock / (kSplit ? split : 1);
  const int k_first = part * kblocks * kKBlock;

  // ---- split: pre-touch the MLP weights (results only consumed at the arrival below) --------------
  // Tile 0's split (>= 2) workgroups touch every 64-byte line once between them (kWarmLoads x split x
  // 512 >= kMlpLines); the other tiles' loads all point at line 0 (one L1 line per wave). Issued
  // unconditionally, like every prefetch below: a load under a branch leaves the s_waitcnt pass two
  // paths to merge, and it then waits for loads it does not need.
  uint32_t warm_v[kWarmLoads];
  if constexpr (kSplit) {
    const int lines = 2 * (kWidth * kWidth * 2 / 64) + p.num_routes * (kWidth * 2 / 64);  // <= kMlpLines
#pragma unroll
    for (int j = 0; j < kWarmLoads; ++j) {
      const int i = (j * split + part) * kThreads + tid;
      warm_v[j] = touch_mlp_line(p, tile == 0 && i < lines ? i : 0);
    }
  }

  // ---- down-projection: d^T[32 features of this wave][32 kNT tokens] over this K slice -----------
  // Block kb: its weight run is requested in block kb-3 (register ring slot kb % 4), its x in block
  // kb-4 (register slot kb % 2) and written to LDS stage kb % 3 in block kb-2, its B runs are read
  // from LDS in block kb-1 (slot kb % 2); one barrier per block. The loop body is 4 = lcm(4, 2) whole
  // blocks, so every slot is a fixed register name (a rolled loop copies in-flight load targets at the
  // end of each iteration, and each copy costs an s_waitcnt vmcnt(0)), the back edge is taken only
  // after all 4, and every prefetch is unconditional, clamped to the last block past the end
  // (re-read, never used): the s_waitcnt pass then counts exactly and waits only for the data each
  // instruction needs. All 512 threads load x: 8 kNT bytes each, one piece of one token row.
  using XPiece = typename std::conditional<kNT == 2, u32x4, u32x2>::type;
  constexpr int kPieceBytes = static_cast<int>(sizeof(XPiece));
  constexpr int kPiecesPerRow = router_gfx942::kXRowBytes / kPieceBytes;
  static_assert(kTokens * kPiecesPerRow == kThreads, "one x piece per thread per block");
  const int x_row = tid / kPiecesPerRow, x_piece = tid % kPiecesPerRow;
  const bool x_valid = x_row < valid;  // rows past T are written as zeros
  const int x_lds = router_gfx942::x_write_offset(tid, kPieceBytes);
  const uint16_t* x_src =
      p.x + (tok0 + (x_valid ? x_row : valid - 1)) * p.x_row_stride + k_first + x_piece * (kPieceBytes / 2);
  const uint16_t* w_src = p.down_w + static_cast<int64_t>(32 * wave + t) * hidden + k_first + 32 * h;
  auto last = [&](int kb) { return kb < kblocks ? kb : kblocks - 1; };
  auto load_x = [&](int kb) {
    return __builtin_nontemporal_load(reinterpret_cast<const XPiece*>(x_src + kKBlock * last(kb)));
  };
  auto stage = [&](int kb) { return smem + (kb % kXStages) * kStageBytes; };
  auto write_x = [&](int kb, XPiece v) {
    *reinterpret_cast<XPiece*>(stage(kb) + x_lds) = x_valid ? v : XPiece{};
  };

  f32x16 acc[kNT];
  zero(acc);
  KRun w_ring[kWRing];
  KRun b_ring[2][kNT];
  XPiece x_ring[2];
#pragma unroll
  for (int j = 0; j < kWRing - 1; ++j) w_ring[j] = load_run(w_src + kKBlock * last(j));
  {
    const XPiece x0 = load_x(0), x1 = load_x(1);
    x_ring[0] = load_x(2);
    x_ring[1] = load_x(3);
    write_x(0, x0);
    write_x(1, x1);  // with a single block: stage 1 is never read
  }
  __syncthreads();
#pragma unroll
  for (int n = 0; n < kNT; ++n) b_ring[0][n] = lds_x_run(stage(0), kTokensPerNTile * n + t, lane);

  auto block = [&](auto slot, int kb) {  // slot = kb % 4, a compile-time constant
    constexpr int i = decltype(slot)::value;
    w_ring[(i + kWRing - 1) % kWRing] = load_run(w_src + kKBlock * last(kb + kWRing - 1));
    // Keep this block's W_down requests ahead of the x write below: vmcnt is in order, so a wait for
    // the (older) x chunk issued after them would also wait for them.
    __builtin_amdgcn_sched_barrier(0);
    // Stage kb+1 was written in block kb-1 (or before the loop), then a barrier. Past the end this
    // reads stage kb again: nobody writes it in this block.
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      b_ring[(i + 1) % 2][n] = lds_x_run(stage(last(kb + 1)), kTokensPerNTile * n + t, lane);
    }
    mfma_kblock(acc, w_ring[i], b_ring[i % 2]);
    // Stage (kb+2)%3 = (kb-1)%3 was last read in block kb-2, before a barrier. Past the end the write
    // lands in a stage no later block reads.
    write_x(kb + 2, x_ring[i % 2]);
    x_ring[i % 2] = load_x(kb + 4);
    __syncthreads();
  };
  int kb = 0;
  for (; kb + kWRing <= kblocks; kb += kWRing) {
    block(std::integral_constant<int, 0>{}, kb);
    block(std::integral_constant<int, 1>{}, kb + 1);
    block(std::integral_constant<int, 2>{}, kb + 2);
    block(std::integral_constant<int, 3>{}, kb + 3);
  }
  if (kb < kblocks) block(std::integral_constant<int, 0>{}, kb);  // tail: H / 64 / split not a multiple of 4
  if (kb + 1 < kblocks) block(std::integral_constant<int, 1>{}, kb + 1);
  if (kb + 2 < kblocks) block(std::integral_constant<int, 2>{}, kb + 2);

  // ---- split-K: publish this slice's partial; the last workgroup of the tile carries on ----------
  if constexpr (kSplit) {
    float* slots = p.partials;  // [split][tiles] slots of [32 tokens][256] fp32
    const int64_t tile_slot0 = tile;  // slot of (tile, slice s) = s * tiles + tile
    float* mine = slots + (static_cast<int64_t>(part) * tiles + tile_slot0) * kSlotFloats;
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      const int token = kTokensPerNTile * n + t;
      if (token >= valid) continue;
#pragma unroll
      for (int g = 0; g < 4; ++g) {
        *reinterpret_cast<f32x4*>(mine + token * kWidth + acc_feature(wave, lane, 4 * g)) =
            f32x4{acc[n][4 * g], acc[n][4 * g + 1], acc[n][4 * g + 2], acc[n][4 * g + 3]};
      }
    }
    // One agent-scope release per workgroup, by thread 0 after the barrier. Its L2 writeback (buffer_wbl2)
    // only covers stores that have reached the L2, and a workgroup-scope release emits no vmcnt wait on
    // gfx942 outside tgsplit mode (the barriers below are s_waitcnt lgkmcnt(0) + s_barrier), so every
    // wave first waits for its own partial stores: s_waitcnt vmcnt(0) (gfx9 encoding: vmcnt 0, expcnt 7,
    // lgkmcnt 15), then the barrier. The fence's own s_waitcnt vmcnt(0) orders the writeback before the
    // arrival atomic (an acq_rel atomic alone emits its writeback with no wait before it).
    __builtin_amdgcn_s_waitcnt(0x0F70);
    __syncthreads();
    if (tid == 0) {
      __builtin_amdgcn_fence(__ATOMIC_RELEASE, "agent");
      *arrival =
          static_cast<int>(__hip_atomic_fetch_add(arrivals + tile, 1u, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT));
    }
    __syncthreads();
    uint32_t warm = 0;
#pragma unroll
    for (int j = 0; j < kWarmLoads; ++j) warm ^= warm_v[j];
    asm volatile("" ::"v"(warm));  // keeps the pre-touch loads (they completed at the release fence)
    if (*arrival != split - 1) return;  // uniform: not the last slice of this tile to arrive
    __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "agent");  // every wave: the other slices' partials are visible
    f32x16 total[kNT];
    zero(total);
    for (int s = 0; s < split; ++s) {  // slot order, not arrival order: bitwise reproducible
      if (s == part) {
#pragma unroll
        for (int n = 0; n < kNT; ++n) total[n] += acc[n];
        continue;
      }
      const float* other = slots + (static_cast<int64_t>(s) * tiles + tile_slot0) * kSlotFloats;
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
        const int token = kTokensPerNTile * n + t;
        if (token >= valid) continue;
#pragma unroll
        for (int g = 0; g < 4; ++g) {
          const f32x4 v = *reinterpret_cast<const f32x4*>(other + token * kWidth + acc_feature(wave, lane, 4 * g));
#pragma unroll
          for (int e = 0; e < 4; ++e) total[n][4 * g + e] += v[e];
        }
      }
    }
#pragma unroll
    for (int n = 0; n < kNT; ++n) acc[n] = total[n];
  }

  // ---- r = d + b [+ eda * r_prev] -> r_out (bf16); row sums of squares. r overwrites acc. --------
  // Vectors stay packed bf16 (2 VGPRs per 4 features) until used: this is the register peak of the
  // kernel (r, the vectors, r_prev), so fc1's 64 VGPRs of rows are requested only after it.
  const bool has_eda = p.r_prev != nullptr && p.eda_scale != nullptr;  // the launcher passes both or neither
  u32x2 down_b[4], eda[4];
  load_pieces(p.down_b, wave, lane, down_b);
  if (has_eda) load_pieces(p.eda_scale, wave, lane, eda);
#pragma unroll
  for (int n = 0; n < kNT; ++n) {
    const int token = kTokensPerNTile * n + t;
    const bool ok = token < valid;
    const int64_t row = tok0 + token;
    u32x2 prev[4];
#pragma unroll
    for (int g = 0; g < 4; ++g) {
      prev[g] = (has_eda && ok) ? load_piece(p.r_prev + row * p.r_prev_row_stride + acc_feature(wave, lane, 4 * g))
                                : u32x2{0u, 0u};
    }
    float sq = 0.f;
#pragma unroll
    for (int g = 0; g < 4; ++g) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float d = acc[n][4 * g + e];
        const float r = has_eda ? router_state(d, piece_value(down_b[g], e), piece_value(eda[g], e),
                                               piece_value(prev[g], e))
                                : d + piece_value(down_b[g], e);
        acc[n][4 * g + e] = r;
        sq += r * r;
      }
      if (ok) {
        *reinterpret_cast<u32x2*>(p.r_out + row * p.r_out_row_stride + acc_feature(wave, lane, 4 * g)) =
            u32x2{pack_bf16x2(acc[n][4 * g], acc[n][4 * g + 1]), pack_bf16x2(acc[n][4 * g + 2], acc[n][4 * g + 3])};
      }
    }
    sq += shfl_xor(sq, 32);  // lane halves h = 0, 1 hold the other 16 of the wave's 32 features
    if (h == 0) sum_squares[wave * kTokens + token] = sq;
  }

  // ---- fc1 rows of this wave start streaming now; they land during the norm --------------------------
  const int64_t mlp_row = static_cast<int64_t>(32 * wave + t) * kWidth + 32 * h;
  KRun ring[kMlpKBlocks];
#pragma unroll
  for (int kb = 0; kb < kMlpKBlocks; ++kb) ring[kb] = load_run(p.fc1_w + mlp_row + kKBlock * kb);
  __syncthreads();
  float inv_rms[kNT];
#pragma unroll
  for (int n = 0; n < kNT; ++n) {
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kWaves; ++w) total += sum_squares[w * kTokens + kTokensPerNTile * n + t];
    inv_rms[n] = rms_inverse(total, kWidth, p.eps);
  }
  __syncthreads();  // every wave has its sums before n overwrites them

  // ---- n = bf16(r / rms * norm_w) -> activation tile --------------------------------------------
  {
    u32x2 norm_w[4];
    load_pieces(p.norm_w, wave, lane, norm_w);
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      float v[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) v[i] = rms_normalize(acc[n][i], inv_rms[n], piece_value(norm_w[i / 4], i % 4));
      uint32_t packed[8];
      pack16(v, packed);
      act_store_pieces(smem, kTokensPerNTile * n + t, wave, lane, packed);
    }
  }
  __syncthreads();

  // ---- h1 = GELU(fc1 n + b1), fc2's rows streaming into the ring behind it -------------------------
  uint32_t hid[kNT][8];
  gelu_layer<kNT>(ring, smem, p.fc1_b, p.fc2_w + mlp_row, wave, lane, hid);
  __syncthreads();  // every wave has read n
#pragma unroll
  for (int n = 0; n < kNT; ++n) act_store_pieces(smem, kTokensPerNTile * n + t, wave, lane, hid[n]);
  __syncthreads();

  // ---- h2 = GELU(fc2 h1 + b2); meanwhile every wave fetches an out_w K block (clamped: only the
  // 4 kNT logit waves use theirs, and only its rows < E'; the others are zeroed at use) -------------
  const bool logit_wave = wave < kLogitQuarters * kNT;  // uniform per wave
  const int logit_n = wave % kNT, quarter = wave / kNT;
  const int route_row = t < p.num_routes ? t : p.num_routes - 1;
  const KRun w_out_raw = load_run(p.out_w + static_cast<int64_t>(route_row) * kWidth +
                                  kKBlock * (quarter < kLogitQuarters ? quarter : kLogitQuarters - 1) + 32 * h);
  gelu_layer<kNT>(ring, smem, p.fc2_b, nullptr, wave, lane, hid);
  __syncthreads();
#pragma unroll
  for (int n = 0; n < kNT; ++n) act_store_pieces(smem, kTokensPerNTile * n + t, wave, lane, hid[n]);
  __syncthreads();
  const KRun w_out = t < p.num_routes ? w_out_raw : zero_run();  // routes >= E': logit 0, never chosen

  // ---- logits: partial [32 routes x 32 tokens] of N tile logit_n over K quarter `quarter` ----------
  f32x16 logits = {};
  if (logit_wave) {
    const KRun b = lds_act_run(smem, kTokensPerNTile * logit_n + t, quarter, lane);
#pragma unroll
    for (int step = 0; step < kStepsPerKBlock; ++step) {
      mfma_32x32x8(logits, step_operand(w_out, step), step_operand(b, step));
    }
  }
  __syncthreads();  // h2 fully read before the partial logits overlay it
  if (logit_wave) {
#pragma unroll
    for (int g = 0; g < 4; ++g) {  // routes 8g + 4h + 0..3 of token 32 logit_n + t: chunk 2g + h
      const f32x4 v = {logits[4 * g], logits[4 * g + 1], logits[4 * g + 2], logits[4 * g + 3]};
      lds_store16(smem, router_gfx942::logit_write_offset(quarter, kTokens, kTokensPerNTile * logit_n + t, lane, g),
                  __builtin_bit_cast(u32x4, v));
    }
  }
  __syncthreads();
  if (tid < 4 * kTokens) route_tokens<kTokens>(p, smem, tid, tok0, valid);
}

int device_compute_units() {
  int device = 0, cus = 0;
  if (hipGetDevice(&device) != hipSuccess ||
      hipDeviceGetAttribute(&cus, hipDeviceAttributeMultiprocessorCount, device) != hipSuccess || cus <= 0) {
    (void)hipGetLastError();  // a failed query must not surface as the launch's error
    return kDefaultCus;
  }
  return cus;
}

template <int kNT, bool kSplit>
const char* launch_plan(const ZayaRouterParams& p, const router_gfx942::RouterPlan& plan, uint32_t* arrivals,
                        hipStream_t stream) {
  hipLaunchKernelGGL((zaya_router_gfx942_kernel<kNT, kSplit>), dim3(static_cast<uint32_t>(plan.grid)), dim3(kThreads),
                     0, stream, p, plan.tiles, plan.split, arrivals);
  return last_launch_error();
}

// The plan for these params on this device (the same query in zaya_router_workspace_bytes and the launch).
router_gfx942::RouterPlan plan_for(const ZayaRouterParams& params) {
  return router_gfx942::router_plan(params.num_tokens, params.hidden, device_compute_units(), kMaxSplitSlots);
}

// Bytes of the split plan's partial slots; the arrival counters follow them in the workspace.
int64_t partial_bytes(const router_gfx942::RouterPlan& plan) {
  return plan.split * plan.tiles * static_cast<int64_t>(kSlotFloats * sizeof(float));
}

}  // namespace gfx942

// The split plan's workspace: its partial slots, then one uint32 arrival counter per tile; none
// without a split (or without tokens).
int64_t zaya_router_workspace_bytes(const ZayaRouterParams& params) {
  if (params.num_tokens <= 0) return 0;
  const router_gfx942::RouterPlan plan = gfx942::plan_for(params);
  if (plan.nt != 1 || plan.split <= 1) return 0;
  return gfx942::partial_bytes(plan) + plan.tiles * static_cast<int64_t>(sizeof(uint32_t));
}

// Same contract as the CUDA launcher: nullptr, or the runtime's (or a shape) error message. The plan
// is chosen here from T, H and the device's CU count (see the design note); params.variant is ignored.
const char* launch_zaya_router(const ZayaRouterParams& params, StreamHandle stream_handle) {
  if (params.num_tokens <= 0) return nullptr;
  if (params.hidden < kRouterHiddenStep || params.hidden > kRouterMaxHidden || params.hidden % kRouterHiddenStep != 0) {
    return "zaya_router (gfx942): hidden must be a multiple of 512 in [512, 2048]";
  }
  if (params.num_routes < 2 || params.num_routes > kRouterMaxRoutes) {
    return "zaya_router (gfx942): num_routes must be in [2, 32]";
  }
  const router_gfx942::RouterPlan plan = gfx942::plan_for(params);
  if (plan.grid > 0x7fffffff) return "zaya_router (gfx942): too many tokens for one launch";
  const hipStream_t stream = static_cast<hipStream_t>(stream_handle);
  if (plan.nt == 2) return gfx942::launch_plan<2, false>(params, plan, nullptr, stream);
  if (plan.split == 1) return gfx942::launch_plan<1, false>(params, plan, nullptr, stream);
  if (params.partials == nullptr) {
    return "zaya_router (gfx942): the split plan needs its workspace (zaya_router_workspace_bytes)";
  }
  uint32_t* arrivals =
      reinterpret_cast<uint32_t*>(reinterpret_cast<uint8_t*>(params.partials) + gfx942::partial_bytes(plan));
  if (const hipError_t err = hipMemsetAsync(arrivals, 0, plan.tiles * sizeof(uint32_t), stream); err != hipSuccess) {
    (void)hipGetLastError();  // reported here, not by the next launch's check
    return hipGetErrorString(err);
  }
  return gfx942::launch_plan<1, true>(params, plan, arrivals, stream);
}

// The align as a launch of its own after the router (on CDNA3 no kernel polls the workspace, which
// stays zero): HIP has no programmatic dependent launch to overlap the two anyway.
const char* launch_zaya_route(const ZayaRouterParams& params, StreamHandle stream_handle) {
  if (const char* error = launch_zaya_router(params, stream_handle)) return error;
  return launch_moe_align(params.align, stream_handle);
}

}  // namespace zk
