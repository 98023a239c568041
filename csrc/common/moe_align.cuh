// SPDX-License-Identifier: Apache-2.0
// moe_align.cuh: the portable moe_align kernels, written once for CUDA (warp 32) and HIP (wave 64).
//
// A stable counting sort of the N = T*k (token, slot) pairs by expert (the contract of zaya::moe_align,
// mirrored by reference.moe_align). The pairs are cut into chunks (params.h align_chunk_pairs); one CTA
// of 256 threads sorts one chunk, each of its warps an equal contiguous run of it, walked in passes of
// S steps of one pair per lane (S = 4 in the chunked kernels: a 1024-pair chunk is one pass).
//   1. walk (registers only: no shared memory, no atomics): per step, a ballot per bit of the expert
//      ids. Lane l owns experts l*R .. l*R+R-1 (R = 1 for E <= warp, the ZAYA1 case): it ANDs the
//      ballots into each owned expert's lane mask and counts it. A pair takes from its expert's owner
//      the count of the earlier steps, adds its rank among the lanes below it with the same expert (for
//      R = 1 the owner's mask, one shuffle), and keeps that `offset`: 2 registers per step for any R.
//   2. scan: the warps' totals meet in shared memory behind the one block barrier; every warp then
//      scans them itself (owner lanes, a shuffle scan over them for the padded segment starts). With
//      several chunks, a counting launch wrote chunk_counts[e][chunk]; the sorting CTA sums the chunks
//      before its own and all of them with a warp-parallel reduction (align_chunk_prefix).
//   3. scatter: slot = the warp's first slot of the expert (segment start + earlier chunks + earlier
//      warps + earlier passes; one shuffle from the owner) + offset.
// Chunk, warp, pass, step and lane order are all ascending pair order, so each segment is in ascending
// pair order; the result is deterministic (integer sums only). The padding slots and blocks of expert e
// are written by global warp e, the tail past num_padded by every thread, expert_offsets and num_padded
// by CTA 0's warp 0: no output element is written twice or left unwritten.
//
// Cost model (H200, E = 16, k = 1, the bench's CUDA-graph replays). Before this version: T=1024 5.7 us
// (one CTA), T=4096 11.6 us (one 512-thread CTA, 8 steps), T=65536 27.4 us (two launches of 8 CTAs of
// 8192 pairs); topk_gating, one plain launch, replays at 2.5 us. So a launch costs ~2.5 us and the old
// walks ~2 ns per pair on one SM ((11.6 - 5.7) us / 3072 pairs) (their shared-memory atomics chained atomic -> shuffle -> store in
// every step; each sorting CTA read chunk_counts in a serial loop per expert). This walk is ~34
// instructions per warp-step in the branch-free pass (SASS, E = 16: 5 ballots, 10 LOP3, 6 ISETP, 2
// shuffles, 2 popc) and the scatter ~10 more: ~0.25 ns per pair per SM if the integer pipe (half rate on
// Hopper) is the limit, ~7x less than before. Hence:
//   * one CTA up to 4096 pairs for E <= 64: T=4096 is 128 warp-steps, ~1 us on one SM, less than a
//     second launch; T <= 1024 takes the 4-step kernel (~0.25 us of walking at T=1024, no
//     atomics, no histogram zeroing), so decode and small prefill are no slower than the old fast path.
//   * above it, chunks of 1024 pairs: T=65536 is 64 CTAs per launch (of 132 SMs), ~0.25 us of walking
//     each; the ids and the 64 x 16 chunk_counts (4 loads per thread) arrive in one round trip. Expected
//     ~2 x (2.5 us launch + ~1 us) instead of 27.4 us. Smaller chunks would fill all SMs but double the
//     chunk_counts each CTA reads; larger ones (8192: 8 CTAs) left 124 SMs idle.
//   * a full pass runs its steps without a branch, so the compiler overlaps one step's ballot -> AND ->
//     shuffle -> popc latency chain with the next (every warp at T=1024, T=4096 and in full chunks).
#pragma once

#include "compat.h"
#include "launch.h"
#include "params.h"

namespace zk {

// ---- index math shared by the kernels and the host (CPU-tested) -----------------------------------

ZK_HOST_DEVICE int32_t round_up_to(int32_t value, int32_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Ballots needed to tell experts 0..E-1 apart: ceil(log2 E) (0 for one expert).
ZK_HOST_DEVICE int align_expert_bits(int32_t num_experts) {
  int bits = 0;
  while ((1 << bits) < num_experts) ++bits;
  return bits;
}

// The kernels are compiled for 4..8 expert bits (E <= 16, ZAYA1 and Mixtral, up to E <= 256): one ballot
// per bit and step, so E = 16 must not pay for a fifth.
constexpr int kAlignMinBits = 4;
ZK_HOST_DEVICE int align_kernel_bits(int32_t num_experts) {
  const int bits = align_expert_bits(num_experts);
  return bits < kAlignMinBits ? kAlignMinBits : bits;
}

// R: experts owned by each lane for 2^bits experts, warp_size lanes (1, or 2^bits / warp_size).
ZK_HOST_DEVICE constexpr int align_lane_experts(int bits, int warp_size) {
  return (1 << bits) <= warp_size ? 1 : (1 << bits) / warp_size;
}

// Length of each warp's run of a chunk of chunk_pairs pairs: the chunk split evenly over the warps,
// rounded up to whole steps (the last runs may be short or empty).
ZK_HOST_DEVICE int32_t align_run_length(int32_t chunk_pairs, int warps, int warp_size) {
  return round_up_to((chunk_pairs + warps - 1) / warps, warp_size);
}

ZK_HOST_DEVICE constexpr int align_log2(int value) {
  int log = 0;
  while ((2 << log) <= value) ++log;
  return log;
}

// ---- shapes ---------------------------------------------------------------------------------------

// 256 threads: 8 warps (4 waves on CDNA3). Every warp repeats the scan over the 8 warps' rows (4 on
// CDNA3) to spare a second block barrier; more warps would grow that, fewer would lengthen the walks.
constexpr int kAlignThreads = 256;
constexpr int kAlignWarps = kAlignThreads / kWarpSize;
// Steps per pass of the chunked kernels: a kAlignPassPairs chunk is one pass.
constexpr int kAlignChunkSteps = kAlignPassPairs / kAlignThreads;
// Steps per pass of the one-CTA launch for R experts per lane: align_one_cta_max_pairs(E) of the tier in
// one pass, 16 steps for E <= 64 (R = 1, 2 on CUDA), 8 for E <= 128, 4 for E <= 256.
constexpr int align_one_cta_steps(int r) { return 1024 / (r * kWarpSize) < 16 ? 1024 / (r * kWarpSize) : 16; }

static_assert(kAlignPassPairs % kAlignThreads == 0, "a pass must be whole steps of every warp");
static_assert(kAlignMaxExperts <= kAlignThreads, "the counting kernel gives each expert one thread");
static_assert(kAlignWarps <= kWarpSize, "the chunk prefix reduction and the scan fit one warp");
static_assert(kAlignMaxExperts % kWarpSize == 0, "R * warp covers kAlignMaxExperts exactly");

constexpr bool align_one_cta_is_one_pass() {
  for (int bits = kAlignMinBits; (1 << bits) <= kAlignMaxExperts; ++bits) {
    const int steps = align_one_cta_steps(align_lane_experts(bits, kWarpSize));
    if (steps * kAlignThreads < align_one_cta_max_pairs(1 << bits)) return false;
  }
  return true;
}
static_assert(align_one_cta_is_one_pass(), "the one-CTA launch walks its pairs in one pass (else it walks them twice)");

// ---- the walk -------------------------------------------------------------------------------------

// The calling warp's run of a chunk: pairs [first, first + pairs).
struct AlignRun {
  int32_t first;
  int32_t pairs;
};

ZK_DEVICE AlignRun align_warp_run(const MoeAlignParams& p, int chunk) {
  const int warp = threadIdx.x / kWarpSize;
  const int32_t num_pairs = p.num_tokens * p.k;
  const int32_t chunk_first = chunk * p.chunk_pairs;
  const int32_t left = num_pairs - chunk_first;
  const int32_t chunk_n = left < p.chunk_pairs ? left : p.chunk_pairs;
  const int32_t run = align_run_length(chunk_n, kAlignWarps, kWarpSize);
  const int32_t start = warp * run;
  int32_t pairs = chunk_n - start;
  pairs = pairs < 0 ? 0 : pairs > run ? run : pairs;
  return {chunk_first + start, pairs};
}

template <int S>
ZK_DEVICE int align_passes(const AlignRun& run) {
  return (run.pairs + S * kWarpSize - 1) / (S * kWarpSize);
}

// The ids of one pass of the run: S steps of one pair per lane.
template <int S>
struct AlignPass {
  int32_t first;  // this lane's pair at step 0; step s holds pair first + s * kWarpSize
  int steps;      // steps of this pass (uniform per warp)
  int32_t id[S];  // ids of the pairs, -1 past the pass's pairs
};

template <int S>
ZK_DEVICE AlignPass<S> align_load_pass(const MoeAlignParams& p, const AlignRun& run, int pass) {
  constexpr int32_t kPassPairs = S * kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int32_t done = pass * kPassPairs;
  int32_t n = run.pairs - done;
  n = n < 0 ? 0 : n > kPassPairs ? kPassPairs : n;
  AlignPass<S> ps;
  ps.first = run.first + done + lane;
  ps.steps = (n + kWarpSize - 1) / kWarpSize;
  if (p.ids_row_stride == p.k) {  // contiguous ids (uniform): one base address, immediate offsets
    const int32_t* ids = p.ids + ps.first;
#pragma unroll
    for (int step = 0; step < S; ++step) ps.id[step] = step * kWarpSize + lane < n ? ids[step * kWarpSize] : -1;
  } else if (n > 0) {  // rows of stride > k: (token, slot) advanced by kWarpSize pairs per step, one division
    const int32_t token = ps.first / p.k, slot0 = ps.first - token * p.k;
    const int32_t token_step = kWarpSize / p.k, slot_step = kWarpSize - token_step * p.k;
    const int32_t* ids = p.ids + token * p.ids_row_stride + slot0;
    const int64_t pointer_step = token_step * p.ids_row_stride + slot_step, carry_step = p.ids_row_stride - p.k;
    int32_t slot = slot0;
#pragma unroll
    for (int step = 0; step < S; ++step) {
      ps.id[step] = step * kWarpSize + lane < n ? *ids : -1;
      ids += pointer_step;
      slot += slot_step;
      if (slot >= p.k) {
        slot -= p.k;
        ids += carry_step;
      }
    }
  } else {  // no pair (and maybe k = 0: no division)
#pragma unroll
    for (int step = 0; step < S; ++step) ps.id[step] = -1;
  }
  return ps;
}

ZK_DEVICE lane_mask_t below_lanes() { return (lane_mask_t(1) << (threadIdx.x % kWarpSize)) - 1; }

// One pass walked: everything the scatter needs, in registers (2 per step, whatever R).
template <int S, int R>
struct AlignWalk {
  int32_t first;      // as AlignPass
  int steps;
  int32_t bucket[S];  // expert of the lane's pair, -1: no pair or an id outside [0, E)
  int32_t offset[S];  // its slot relative to the warp's first slot of the expert in this pass: pairs of
                      // the expert in the pass's earlier steps + lanes below it with the same expert
  int32_t count[R];   // owner lane: pairs of expert lane*R + r in the pass (garbage for e >= E)
};

// One step of the walk for the calling lane's pair `id`: its expert (`bucket`, -1: none) and `offset`,
// and the owner side's counts. All kBits bits are balloted whatever E <= 2^kBits: a valid id is below
// E <= 2^align_expert_bits(E), so the bits above are 0 for it and for every owned expert < E, and
// comparing them changes no mask of a real expert (a runtime `b < bits` would cost a branch per bit).
template <int R, int kBits>
ZK_DEVICE void align_walk_step(int32_t id, int32_t num_experts, const lane_mask_t (&flip)[kBits], int32_t (&count)[R],
                               int32_t& bucket_out, int32_t& offset_out) {
  constexpr int kLowBits = align_log2(R);  // expert bits that pick r
  const int lane = threadIdx.x % kWarpSize;
  const bool is_expert = static_cast<uint32_t>(id) < static_cast<uint32_t>(num_experts);
  const int32_t bucket = is_expert ? id : -1;
  const lane_mask_t valid = ballot(is_expert);
  lane_mask_t bit_set[kBits];
#pragma unroll
  for (int b = 0; b < kBits; ++b) bit_set[b] = ballot((bucket >> b) & 1);
  lane_mask_t high = valid;  // lanes agreeing with this lane's experts on every bit above kLowBits
#pragma unroll
  for (int b = kLowBits; b < kBits; ++b) high &= bit_set[b] ^ flip[b];
  // Owner side: the lanes of each owned expert, its count before and after this step.
  const int owner = bucket >= 0 ? bucket >> kLowBits : lane;
  lane_mask_t peers = 0;
  int32_t before = 0;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    lane_mask_t mask = high;
#pragma unroll
    for (int b = 0; b < kLowBits; ++b) mask &= ((r >> b) & 1) ? bit_set[b] : ~bit_set[b];
    // Pair side: the count before this step of the lane's expert, from its owner.
    const int32_t owner_before = shfl(count[r], owner);
    if ((bucket & (R - 1)) == r) before = owner_before;
    if constexpr (R == 1) peers = shfl(mask, owner);  // the owner's mask is the pair's group
    count[r] += popc(mask);
  }
  if constexpr (R > 1) {
    peers = valid;
#pragma unroll
    for (int b = 0; b < kBits; ++b) peers &= ((bucket >> b) & 1) ? bit_set[b] : ~bit_set[b];
  }
  bucket_out = bucket;
  offset_out = before + popc(peers & below_lanes());
}

// A full pass (every warp of a full chunk, and of the one-CTA launch at its bound) walks its S steps
// without a branch, so that the compiler overlaps one step's ballot -> AND -> shuffle -> popc chain
// with the next ones; a short pass guards each step (uniform per warp).
template <int S, int R, int kBits>
ZK_DEVICE AlignWalk<S, R> align_walk(const AlignPass<S>& ps, int32_t num_experts) {
  constexpr int kLowBits = align_log2(R);
  static_assert(R == align_lane_experts(kBits, kWarpSize), "lane l owns experts l*R .. l*R+R-1 of 2^kBits");
  const int lane = threadIdx.x % kWarpSize;
  // flip[b] for the bits above kLowBits: all ones where bit b of this lane's experts is 0, so that
  // (ballot ^ flip) keeps the lanes whose id agrees with them on bit b.
  lane_mask_t flip[kBits];
#pragma unroll
  for (int b = 0; b < kBits; ++b) {
    flip[b] = b >= kLowBits && ((lane >> (b - kLowBits)) & 1) ? lane_mask_t(0) : ~lane_mask_t(0);
  }
  AlignWalk<S, R> wk;
  wk.first = ps.first;
  wk.steps = ps.steps;
#pragma unroll
  for (int r = 0; r < R; ++r) wk.count[r] = 0;
  if (ps.steps == S) {
#pragma unroll
    for (int step = 0; step < S; ++step) {
      align_walk_step<R, kBits>(ps.id[step], num_experts, flip, wk.count, wk.bucket[step], wk.offset[step]);
    }
  } else {
#pragma unroll
    for (int step = 0; step < S; ++step) {
      wk.bucket[step] = -1;
      wk.offset[step] = 0;
      if (step < ps.steps) {
        align_walk_step<R, kBits>(ps.id[step], num_experts, flip, wk.count, wk.bucket[step], wk.offset[step]);
      }
    }
  }
  return wk;
}

template <int R>
ZK_DEVICE void align_scatter_step(const MoeAlignParams& p, int32_t bucket, int32_t offset, int32_t pair,
                                  const int32_t (&running)[R]) {
  const int lane = threadIdx.x % kWarpSize;
  const int owner = bucket >= 0 ? bucket / R : lane;
  int32_t base = 0;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int32_t slot = shfl(running[r], owner);
    if ((bucket & (R - 1)) == r) base = slot;
  }
  if (bucket >= 0) p.sorted_token_ids[base + offset] = pair;
}

// Scatter of a walked pass; running[r] (owner lane): the warp's first slot of expert lane*R + r in it.
template <int S, int R>
ZK_DEVICE void align_scatter(const MoeAlignParams& p, const AlignWalk<S, R>& wk, const int32_t (&running)[R]) {
  if (wk.steps == S) {
#pragma unroll
    for (int step = 0; step < S; ++step) {
      align_scatter_step<R>(p, wk.bucket[step], wk.offset[step], wk.first + step * kWarpSize, running);
    }
  } else {
#pragma unroll
    for (int step = 0; step < S; ++step) {
      if (step < wk.steps) {
        align_scatter_step<R>(p, wk.bucket[step], wk.offset[step], wk.first + step * kWarpSize, running);
      }
    }
  }
}

// ---- the scan -------------------------------------------------------------------------------------

template <int R>
struct AlignShared {
  int32_t counts[kAlignWarps][R * kWarpSize];  // pairs of each expert in each warp's run
  int32_t chunk_before[R * kWarpSize];         // several chunks: pairs of each expert in earlier chunks
  int32_t chunk_total[R * kWarpSize];          // several chunks: pairs of each expert in all chunks
};

// The warp's run totals into its row of counts (owner lanes, experts < E).
template <int R>
ZK_DEVICE void align_store_counts(const MoeAlignParams& p, AlignShared<R>& s, const int32_t (&count)[R]) {
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int e = lane * R + r;
    if (e < p.num_experts) s.counts[warp][e] = count[r];
  }
}

// Sorting CTA of chunk `chunk` with several chunks: the pairs of each expert in the earlier chunks
// and in all of them, from chunk_counts [E, num_chunks]. `group` lanes of one warp share an expert
// (the most that let the CTA's threads cover all E), each summing every group-th chunk, coalesced;
// a butterfly over the group adds them up. 64 chunks x 16 experts: 4 loads per thread, one round trip.
template <int R>
ZK_DEVICE void align_chunk_prefix(const MoeAlignParams& p, AlignShared<R>& s, int chunk) {
  int group = kWarpSize;
  while (group * p.num_experts > kAlignThreads) group /= 2;
  const int e = threadIdx.x / group, j = threadIdx.x % group;
  int32_t before = 0, total = 0;
  if (e < p.num_experts) {
    const int32_t* row = p.chunk_counts + e * p.num_chunks;
#pragma unroll 4
    for (int c = j; c < p.num_chunks; c += group) {
      const int32_t count = row[c];
      total += count;
      before += c < chunk ? count : 0;
    }
  }
  for (int offset = group / 2; offset > 0; offset /= 2) {  // uniform: every lane of the warp takes part
    total += shfl_xor(total, offset);
    before += shfl_xor(before, offset);
  }
  if (e < p.num_experts && j == 0) {
    s.chunk_total[e] = total;
    s.chunk_before[e] = before;
  }
}

// Sum of `value` over lanes 0..lane, for the lanes below `lanes` (uniform; the others get partial sums).
ZK_DEVICE int32_t warp_inclusive_sum(int32_t value, int lanes) {
  const int lane = threadIdx.x % kWarpSize;
  for (int offset = 1; offset < lanes; offset *= 2) {
    const int32_t lower = shfl(value, lane >= offset ? lane - offset : lane);
    if (lane >= offset) value += lower;
  }
  return value;
}

// The scan's result in the registers of the lane that owns expert e = lane * R + r (zeros for e >= E).
// Segments are counted in blocks of block_m, so no slot bound needs a division afterwards.
template <int R>
struct AlignScan {
  int32_t total[R];        // pairs of the expert
  int32_t first_block[R];  // its segment: blocks [first_block, first_block + blocks)
  int32_t blocks[R];
  int32_t running[R];      // the calling warp's first slot of the expert
  int32_t padded_blocks;   // blocks of all segments, num_padded / block_m (uniform)
};

// Step 2, done by every warp on its own after the block barrier: the owned experts' totals (the warps'
// rows, or chunk_total), the segments as a shuffle scan of the blocks per expert (3 shuffles for
// E = 16), and the warp's first slot of each expert: segment start + earlier chunks + earlier warps.
template <int R>
ZK_DEVICE AlignScan<R> align_scan(const MoeAlignParams& p, const AlignShared<R>& s) {
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const bool chunked = p.num_chunks > 1;
  AlignScan<R> sc;
  int32_t earlier[R];
  int32_t lane_blocks = 0;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int e = lane * R + r;
    int32_t total = 0, before = 0;
    if (e < p.num_experts) {
#pragma unroll
      for (int w = 0; w < kAlignWarps; ++w) {
        const int32_t count = s.counts[w][e];
        before += w < warp ? count : 0;
        total += count;
      }
      if (chunked) {
        before += s.chunk_before[e];
        total = s.chunk_total[e];
      }
    }
    sc.total[r] = total;
    sc.blocks[r] = (total + p.block_m - 1) / p.block_m;
    earlier[r] = before;
    lane_blocks += sc.blocks[r];
  }
  const int owner_lanes = (p.num_experts + R - 1) / R;
  const int32_t inclusive = warp_inclusive_sum(lane_blocks, owner_lanes);
  sc.padded_blocks = shfl(inclusive, owner_lanes - 1);
  int32_t block = inclusive - lane_blocks;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    sc.first_block[r] = block;
    sc.running[r] = block * p.block_m + earlier[r];
    block += sc.blocks[r];
  }
  return sc;
}

// Every output but the pairs' slots: the padding (fewer than block_m slots) and blocks of expert e by
// global warp e (then e + all warps, ...), its bounds shuffled from its owner lane; the slots and
// blocks past num_padded by every thread; expert_offsets and num_padded by CTA 0's warp 0.
template <int R>
ZK_DEVICE void align_write_rest(const MoeAlignParams& p, const AlignScan<R>& sc) {
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int32_t num_pairs = p.num_tokens * p.k;
  const int all_warps = gridDim.x * kAlignWarps;
  for (int e = blockIdx.x * kAlignWarps + warp; e < p.num_experts; e += all_warps) {  // uniform per warp
    const int owner = e / R;
    int32_t first_block = 0, blocks = 0, total = 0;
#pragma unroll
    for (int r = 0; r < R; ++r) {  // select among shuffled values: a select among sc's would become a
      const int32_t f = shfl(sc.first_block[r], owner), b = shfl(sc.blocks[r], owner);  // dynamic index
      const int32_t t = shfl(sc.total[r], owner);                                          // (the stack)
      if ((e & (R - 1)) == r) {
        first_block = f;
        blocks = b;
        total = t;
      }
    }
    const int32_t end_block = first_block + blocks;
    const int32_t end = end_block * p.block_m;
    for (int32_t slot = first_block * p.block_m + total + lane; slot < end; slot += kWarpSize) {
      p.sorted_token_ids[slot] = num_pairs;
    }
    for (int32_t block = first_block + lane; block < end_block; block += kWarpSize) p.block_expert_ids[block] = e;
  }
  const int32_t num_padded = sc.padded_blocks * p.block_m;
  const int32_t thread = blockIdx.x * kAlignThreads + threadIdx.x;
  const int32_t all_threads = gridDim.x * kAlignThreads;
  for (int32_t slot = num_padded + thread; slot < p.capacity; slot += all_threads) p.sorted_token_ids[slot] = num_pairs;
  for (int32_t block = sc.padded_blocks + thread; block < p.num_blocks; block += all_threads) {
    p.block_expert_ids[block] = -1;
  }
  if (blockIdx.x == 0 && warp == 0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int e = lane * R + r;
      if (e < p.num_experts) p.expert_offsets[e] = sc.first_block[r] * p.block_m;
    }
    if (lane == 0) {
      p.expert_offsets[p.num_experts] = num_padded;
      p.num_padded[0] = num_padded;
    }
  }
}

// ---- kernels --------------------------------------------------------------------------------------

// Counting launch of the chunked path: chunk_counts[e][chunk] = pairs of expert e in the chunk.
template <int S, int kBits>
__global__ void __launch_bounds__(kAlignThreads) moe_align_count_kernel(const MoeAlignParams p) {
  constexpr int R = align_lane_experts(kBits, kWarpSize);
  allow_dependent_launch();
  wait_for_prerequisite_grids();  // ids come from the kernel before this one
  __shared__ AlignShared<R> s;
  const int chunk = blockIdx.x;
  const AlignRun run = align_warp_run(p, chunk);
  const int passes = align_passes<S>(run);
  int32_t count[R];
#pragma unroll
  for (int r = 0; r < R; ++r) count[r] = 0;
  for (int pass = 0; pass < passes; ++pass) {
    const AlignWalk<S, R> wk = align_walk<S, R, kBits>(align_load_pass<S>(p, run, pass), p.num_experts);
#pragma unroll
    for (int r = 0; r < R; ++r) count[r] += wk.count[r];
  }
  align_store_counts(p, s, count);
  __syncthreads();
  if (threadIdx.x < p.num_experts) {
    int32_t total = 0;
#pragma unroll
    for (int w = 0; w < kAlignWarps; ++w) total += s.counts[w][threadIdx.x];
    p.chunk_counts[threadIdx.x * p.num_chunks + chunk] = total;
  }
}

// Sorting launch: one CTA per chunk; with one chunk (align_one_cta_max_pairs) the whole op in one
// launch of one CTA and one block barrier. Only the chunked steps (S = kAlignChunkSteps) compile the
// pass loops: the one-CTA instances walk their pairs in one pass (align_one_cta_is_one_pass), and each
// inlined walk of S = 16 steps (a branch-free and a guarded copy) is ~1.3K instructions.
template <int S, int kBits>
__global__ void __launch_bounds__(kAlignThreads) moe_align_sort_kernel(const MoeAlignParams p) {
  constexpr int R = align_lane_experts(kBits, kWarpSize);
  constexpr bool kMultiPass = S == kAlignChunkSteps;
  allow_dependent_launch();
  wait_for_prerequisite_grids();  // ids (and chunk_counts) come from the kernels before this one
  __shared__ AlignShared<R> s;
  const int chunk = blockIdx.x;
  const AlignRun run = align_warp_run(p, chunk);
  const int passes = align_passes<S>(run);
  // The first pass's ids are loaded before chunk_counts is read, so that both round trips overlap.
  const AlignPass<S> first_pass = align_load_pass<S>(p, run, 0);
  if (p.num_chunks > 1) align_chunk_prefix(p, s, chunk);
  const AlignWalk<S, R> walk0 = align_walk<S, R, kBits>(first_pass, p.num_experts);
  int32_t count[R];
#pragma unroll
  for (int r = 0; r < R; ++r) count[r] = walk0.count[r];
  if constexpr (kMultiPass) {
    for (int pass = 1; pass < passes; ++pass) {  // chunks above kAlignPassPairs only
      const AlignWalk<S, R> wk = align_walk<S, R, kBits>(align_load_pass<S>(p, run, pass), p.num_experts);
#pragma unroll
      for (int r = 0; r < R; ++r) count[r] += wk.count[r];
    }
  }
  align_store_counts(p, s, count);
  __syncthreads();  // the only block barrier: every warp's scan reads every warp's row
  const AlignScan<R> sc = align_scan<R>(p, s);

  int32_t running[R];
#pragma unroll
  for (int r = 0; r < R; ++r) running[r] = sc.running[r];
  align_scatter(p, walk0, running);
  if constexpr (kMultiPass) {
#pragma unroll
    for (int r = 0; r < R; ++r) running[r] += walk0.count[r];
    for (int pass = 1; pass < passes; ++pass) {  // walked again: the first walk kept only its counts
      const AlignWalk<S, R> wk = align_walk<S, R, kBits>(align_load_pass<S>(p, run, pass), p.num_experts);
      align_scatter(p, wk, running);
#pragma unroll
      for (int r = 0; r < R; ++r) running[r] += wk.count[r];
    }
  }
  align_write_rest(p, sc);
}

template <int kBits>
inline const char* moe_align_launch_for(const MoeAlignParams& p, stream_t stream) {
  constexpr int kOneCtaSteps = align_one_cta_steps(align_lane_experts(kBits, kWarpSize));
  const dim3 block(kAlignThreads);
  if (p.num_chunks == 1) {
    // Up to 1024 pairs the 4-step instance (also the chunked one): a warp with a full run of 128 pairs
    // takes the branch-free walk, and the kernel is half the 16-step one's code.
    if (p.num_tokens * p.k <= kAlignPassPairs) {
      return launch_dependent(moe_align_sort_kernel<kAlignChunkSteps, kBits>, dim3(1), block, 0, stream, p);
    }
    return launch_dependent(moe_align_sort_kernel<kOneCtaSteps, kBits>, dim3(1), block, 0, stream, p);
  }
  if (const char* err = launch_dependent(moe_align_count_kernel<kAlignChunkSteps, kBits>, dim3(p.num_chunks), block,
                                         0, stream, p)) {
    return err;
  }
  return launch_dependent(moe_align_sort_kernel<kAlignChunkSteps, kBits>, dim3(p.num_chunks), block, 0, stream, p);
}

// Programmatic dependent launches (see compat.h): each kernel waits for the previous one before it
// reads ids or chunk_counts, so on CUDA its launch overlaps the router's (or the counting launch's)
// tail. p.chunk_pairs / p.num_chunks come from params.h align_chunk_pairs. Returns nullptr or the
// runtime's error message.
inline const char* moe_align_launch(const MoeAlignParams& p, stream_t stream) {
  static_assert(align_log2(kAlignMaxExperts) == 8, "the bit tiers below end at 256 experts");
  switch (align_kernel_bits(p.num_experts)) {
    case 4: return moe_align_launch_for<4>(p, stream);
    case 5: return moe_align_launch_for<5>(p, stream);
    case 6: return moe_align_launch_for<6>(p, stream);
    case 7: return moe_align_launch_for<7>(p, stream);
    default: return moe_align_launch_for<8>(p, stream);
  }
}

}  // namespace zk
