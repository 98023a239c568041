// SPDX-License-Identifier: Apache-2.0
// moe_align.cuh: the portable moe_align kernels, written once for CUDA (warp 32) and HIP (wave 64).
//
// A stable counting sort of the N = T*k (token, slot) pairs by expert (the contract of zaya::moe_align,
// mirrored by reference.moe_align). The pairs are cut into chunks of kAlignPairsPerChunk; one CTA sorts
// one chunk, each of its warps an equal contiguous run of it (so a 1K-pair chunk keeps all 16 warps
// busy), kWarpSize pairs per step, the run's expert ids held in registers for both walks below:
//   1. count: per step, the lanes holding the same expert find each other with ballots over the bits of
//      the expert index ("multi-split"); the lowest such lane adds the group size to the warp's row of a
//      [warps, E] histogram in shared memory.
//   2. scan: per expert, the warps' counts become exclusive prefixes; with several chunks, the chunk
//      totals written by a preceding counting launch give the chunk's prefix and the grand totals.
//      Segment starts = exclusive scan of the totals rounded up to block_m.
//   3. scatter: the same walk again; each group's leader bumps the warp's running position by the group
//      size and broadcasts the old value; a lane's slot = that value + the lanes below it in the group.
// Chunk, warp, step and lane order are all ascending pair order, so each segment is in ascending pair
// order and the result is deterministic (integer adds commute; atomics only serialise them).
// Padding slots, block_expert_ids, expert_offsets and num_padded are written by the same launch,
// spread over its CTAs; no output element is written twice or left unwritten.
//
// Small problems (T*k <= kAlignSmallMaxPairs, E <= kAlignSmallMaxExperts: ZAYA1 decode and prefill up
// to T = 1024) take a one-CTA fast path with one block barrier. The sorting kernel's ~10 barriers in a
// dependent chain (zeroing, counting, a log-step shared-memory scan, ...) cost 10.5 us for one pair
// (ncu, H200, E = 16) where an empty launch costs < 1 us. The fast path runs walks 1 and 3 unchanged
// (4 steps of 256 threads); every warp zeroes and fills its own histogram row and then does the whole
// scan itself in registers (see moe_align_small_kernel).
#pragma once

#include "compat.h"
#include "launch.h"
#include "params.h"

namespace zk {

// ---- index math shared by the kernel and the host (CPU-tested) ------------------------------------

ZK_HOST_DEVICE int32_t round_up_to(int32_t value, int32_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Buckets 0..E-1 are experts, bucket E collects every id outside [0, E).
ZK_HOST_DEVICE int32_t align_bucket(int32_t id, int32_t num_experts) {
  return (id >= 0 && id < num_experts) ? id : num_experts;
}

// Bits needed to tell the E + 1 buckets apart in the ballot multi-split.
ZK_HOST_DEVICE int align_bucket_bits(int32_t num_experts) {
  int bits = 0;
  while ((1 << bits) < num_experts + 1) ++bits;
  return bits;
}

// The expert whose padded segment holds slot `position` < num_padded: the last e with
// segment_start[e] <= position (empty segments share their start with the next one, so "last" skips
// them). segment_start: [E] ascending.
ZK_HOST_DEVICE int32_t align_segment_of(const int32_t* segment_start, int32_t num_experts, int32_t position) {
  int32_t lo = 0, hi = num_experts;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int32_t mid = (lo + hi) / 2;
    if (segment_start[mid] <= position) lo = mid; else hi = mid;
  }
  return lo;
}

// ---- kernels --------------------------------------------------------------------------------------

// 512 threads: 16 warps (8 waves on CDNA3) walk a chunk of 8192 pairs in 16 steps of one pair per lane;
// the per-warp histograms stay at 16 KB for 256 experts.
constexpr int kAlignThreads = 512;
static_assert(kAlignPairsPerChunk % kAlignThreads == 0, "a chunk must be whole steps of every warp");
static_assert(kAlignMaxExperts + 1 <= kAlignThreads, "the scan gives each expert (and the total) one thread");

struct AlignShared {
  int32_t warp_counts[kAlignThreads / kWarpSize][kAlignMaxExperts];  // counts, then running positions
  int32_t segment_start[kAlignMaxExperts + 1];                       // padded starts; [E] = num_padded
  int32_t totals[kAlignMaxExperts];                                  // pairs of each expert, all chunks
  int32_t chunk_prefix[kAlignMaxExperts];                            // pairs of each expert, earlier chunks
  int32_t scan[2][kAlignMaxExperts + 1];                             // ping-pong of the block scan
};

// Pairs in chunk `chunk`, and the length of each warp's run: the chunk split evenly over the warps,
// rounded up to whole steps.
ZK_HOST_DEVICE int32_t align_chunk_pairs(int32_t num_pairs, int chunk) {
  const int32_t left = num_pairs - chunk * kAlignPairsPerChunk;
  return left < kAlignPairsPerChunk ? left : kAlignPairsPerChunk;
}
ZK_HOST_DEVICE int32_t align_warp_run(int32_t chunk_pairs, int warps, int warp_size) {
  return round_up_to((chunk_pairs + warps - 1) / warps, warp_size);
}

constexpr int kAlignMaxSteps = kAlignPairsPerChunk / kAlignThreads;  // steps of a full chunk's run

// The expert buckets of this lane's pairs, one per step of its warp's run (-1: no pair), loaded once
// for both walks so that their ballots never wait on memory.
template <int kSteps>
struct AlignLanePairs {
  int32_t first;                    // pair index of step 0; step s is first + s * kWarpSize
  int steps;                        // steps of this warp's run (uniform per warp)
  int32_t bucket[kSteps];
};

// A CTA of kThreads threads loading chunk `chunk`; kSteps * kThreads must cover the chunk's pairs.
template <int kThreads, int kSteps>
ZK_DEVICE AlignLanePairs<kSteps> align_load_pairs(const MoeAlignParams& p, int chunk) {
  constexpr int kWarps = kThreads / kWarpSize;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int32_t num_pairs = p.num_tokens * p.k;
  const int32_t chunk_pairs = align_chunk_pairs(num_pairs, chunk);
  const int32_t run = align_warp_run(chunk_pairs, kWarps, kWarpSize);
  const int32_t run_start = warp * run;  // within the chunk
  AlignLanePairs<kSteps> lp;
  lp.first = chunk * kAlignPairsPerChunk + run_start + lane;
  const int32_t run_pairs = chunk_pairs - run_start < run ? chunk_pairs - run_start : run;
  lp.steps = run_pairs > 0 ? (run_pairs + kWarpSize - 1) / kWarpSize : 0;
#pragma unroll
  for (int step = 0; step < kSteps; ++step) {
    const int32_t in_run = step * kWarpSize + lane;
    lp.bucket[step] = -1;
    if (step < lp.steps && in_run < run_pairs) {
      const int32_t index = lp.first + step * kWarpSize;
      const int32_t token = index / p.k;
      lp.bucket[step] = align_bucket(p.ids[token * p.ids_row_stride + (index - token * p.k)], p.num_experts);
    }
  }
  return lp;
}

// Lanes of the warp whose bucket equals this lane's (including itself); `bucket` may be -1 (inactive).
ZK_DEVICE lane_mask_t align_same_bucket_lanes(int32_t bucket, int bits) {
  lane_mask_t peers = ballot(bucket >= 0);
  for (int b = 0; b < bits; ++b) {
    const bool bit = (bucket >> b) & 1;
    const lane_mask_t set = ballot(bit);
    peers &= bit ? set : ~set;
  }
  return bucket >= 0 ? peers : lane_mask_t(0);
}

// Step 1 for the calling warp's run: row[e] += pairs of expert e in it (row: the warp's histogram row).
template <int kSteps>
ZK_DEVICE void align_count_run(int32_t* row, const AlignLanePairs<kSteps>& lp, int32_t num_experts) {
  const int lane = threadIdx.x % kWarpSize;
  const int bits = align_bucket_bits(num_experts);
  const lane_mask_t below = (lane_mask_t(1) << lane) - 1;
#pragma unroll
  for (int step = 0; step < kSteps; ++step) {
    if (step < lp.steps) {  // uniform per warp (a predicate, not a break: the loop must unroll)
      const int32_t bucket = lp.bucket[step];
      const lane_mask_t peers = align_same_bucket_lanes(bucket, bits);
      if (bucket >= 0 && bucket < num_experts && (peers & below) == 0) atomicAdd(&row[bucket], popc(peers));
    }
  }
}

// Step 3 for the calling warp's run: row[e] = the warp's next slot of expert e, bumped per step.
template <int kSteps>
ZK_DEVICE void align_scatter_run(const MoeAlignParams& p, int32_t* row, const AlignLanePairs<kSteps>& lp) {
  const int lane = threadIdx.x % kWarpSize;
  const int bits = align_bucket_bits(p.num_experts);
  const lane_mask_t below = (lane_mask_t(1) << lane) - 1;
#pragma unroll
  for (int step = 0; step < kSteps; ++step) {
    if (step < lp.steps) {  // uniform per warp
      const int32_t pair = lp.first + step * kWarpSize;
      const int32_t bucket = lp.bucket[step];
      const lane_mask_t peers = align_same_bucket_lanes(bucket, bits);
      const bool is_expert = bucket >= 0 && bucket < p.num_experts;
      const lane_mask_t lowest = peers & (~peers + 1);  // the group's leader, as a one-bit mask
      const int leader = popc(lowest - 1);              // its lane (garbage for lanes without a group)
      int32_t base = 0;
      if (is_expert && (peers & below) == 0) base = atomicAdd(&row[bucket], popc(peers));
      // shfl orders this step's atomics before the next step's: every lane passes it first.
      base = shfl(base, is_expert ? leader : lane);
      if (is_expert) p.sorted_token_ids[base + popc(peers & below)] = pair;
    }
  }
}

// Step 1 for the calling CTA's chunk: warp_counts[w][e] = pairs of expert e in warp w's run.
ZK_DEVICE void align_count_chunk(const MoeAlignParams& p, AlignShared& s, const AlignLanePairs<kAlignMaxSteps>& lp) {
  constexpr int kWarps = kAlignThreads / kWarpSize;
  for (int i = threadIdx.x; i < kWarps * p.num_experts; i += kAlignThreads) {
    s.warp_counts[i / p.num_experts][i % p.num_experts] = 0;
  }
  __syncthreads();
  align_count_run(s.warp_counts[threadIdx.x / kWarpSize], lp, p.num_experts);
  __syncthreads();
}

// Inclusive scan over threads 0..n-1 of `value` (n <= kAlignThreads) through shared memory; every
// thread of the block must call it. Returns the inclusive prefix for threads < n, else 0.
ZK_DEVICE int32_t align_block_inclusive_scan(AlignShared& s, int32_t value, int n) {
  const int t = threadIdx.x;
  int buf = 0;
  if (t < n) s.scan[0][t] = value;
  __syncthreads();
  for (int offset = 1; offset < n; offset *= 2) {
    if (t < n) s.scan[buf ^ 1][t] = s.scan[buf][t] + (t >= offset ? s.scan[buf][t - offset] : 0);
    buf ^= 1;
    __syncthreads();
  }
  return t < n ? s.scan[buf][t] : 0;
}

// Counting launch of the multi-chunk path: chunk_counts[chunk][e] = pairs of expert e in the chunk.
__global__ void __launch_bounds__(kAlignThreads) moe_align_count_kernel(const MoeAlignParams p) {
  allow_dependent_launch();
  wait_for_prerequisite_grids();  // ids (and chunk_counts) come from the kernels before this one
  __shared__ AlignShared s;
  const int chunk = blockIdx.x;
  align_count_chunk(p, s, align_load_pairs<kAlignThreads, kAlignMaxSteps>(p, chunk));
  constexpr int kWarps = kAlignThreads / kWarpSize;
  for (int e = threadIdx.x; e < p.num_experts; e += kAlignThreads) {
    int32_t total = 0;
    for (int w = 0; w < kWarps; ++w) total += s.warp_counts[w][e];
    p.chunk_counts[chunk * p.num_experts + e] = total;
  }
}

// Sorting launch: one CTA per chunk (a single CTA when num_chunks == 1, counting for itself).
__global__ void __launch_bounds__(kAlignThreads) moe_align_sort_kernel(const MoeAlignParams p) {
  allow_dependent_launch();
  wait_for_prerequisite_grids();  // ids (and chunk_counts) come from the kernels before this one
  constexpr int kWarps = kAlignThreads / kWarpSize;
  __shared__ AlignShared s;
  const int chunk = blockIdx.x;
  const int num_experts = p.num_experts;
  const AlignLanePairs<kAlignMaxSteps> lp = align_load_pairs<kAlignThreads, kAlignMaxSteps>(p, chunk);
  align_count_chunk(p, s, lp);

  // 2. scan. Thread e < E: this chunk's warps' counts -> exclusive prefixes; the chunk's prefix and the
  // totals come from the counting launch's chunk_counts, or from this chunk alone.
  int32_t padded = 0;
  if (threadIdx.x < num_experts) {
    const int e = threadIdx.x;
    int32_t running = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int32_t count = s.warp_counts[w][e];
      s.warp_counts[w][e] = running;
      running += count;
    }
    int32_t before = 0, total = running;
    if (p.num_chunks > 1) {
      total = 0;
      for (int c = 0; c < p.num_chunks; ++c) {
        const int32_t count = p.chunk_counts[c * num_experts + e];
        before += c < chunk ? count : 0;
        total += count;
      }
    }
    s.totals[e] = total;
    s.chunk_prefix[e] = before;
    padded = round_up_to(total, p.block_m);
  }
  const int32_t inclusive = align_block_inclusive_scan(s, padded, num_experts);
  if (threadIdx.x < num_experts) {
    s.segment_start[threadIdx.x + 1] = inclusive;
    if (threadIdx.x == 0) s.segment_start[0] = 0;
  }
  __syncthreads();
  const int32_t num_padded = s.segment_start[num_experts];
  // Running slot of (warp, expert) = segment start + pairs of the expert in earlier chunks and warps.
  for (int i = threadIdx.x; i < kWarps * num_experts; i += kAlignThreads) {
    const int w = i / num_experts, e = i % num_experts;
    s.warp_counts[w][e] += s.segment_start[e] + s.chunk_prefix[e];
  }
  __syncthreads();

  // 3. scatter this chunk's pairs.
  align_scatter_run(p, s.warp_counts[threadIdx.x / kWarpSize], lp);
  const int32_t num_pairs = p.num_tokens * p.k;

  // Everything else, spread over the CTAs (grid-stride over each index space).
  const int cta_threads = gridDim.x * kAlignThreads;
  const int global_thread = blockIdx.x * kAlignThreads + threadIdx.x;
  if (blockIdx.x == 0) {
    for (int e = threadIdx.x; e <= num_experts; e += kAlignThreads) p.expert_offsets[e] = s.segment_start[e];
    if (threadIdx.x == 0) p.num_padded[0] = num_padded;
  }
  // Padding inside each segment: slots [start + total, next start), fewer than block_m per expert.
  const int32_t pad_span = p.block_m - 1;
  for (int32_t i = global_thread; i < num_experts * pad_span; i += cta_threads) {
    const int e = i / pad_span, j = i % pad_span;
    const int32_t slot = s.segment_start[e] + s.totals[e] + j;
    if (slot < s.segment_start[e + 1]) p.sorted_token_ids[slot] = num_pairs;
  }
  for (int32_t slot = num_padded + global_thread; slot < p.capacity; slot += cta_threads) {
    p.sorted_token_ids[slot] = num_pairs;
  }
  for (int32_t block = global_thread; block < p.num_blocks; block += cta_threads) {
    const int32_t first = block * p.block_m;
    p.block_expert_ids[block] = first < num_padded ? align_segment_of(s.segment_start, num_experts, first) : -1;
  }
}

// ---- the one-CTA fast path ------------------------------------------------------------------------

// 256 threads: 8 warps (4 waves) of 4 steps at 1024 pairs. Fewer threads would lengthen the ballot walks,
// more would grow the scan that every warp repeats (warps x warps rows read per expert in the CTA).
constexpr int kAlignSmallThreads = 256;
constexpr int kAlignSmallWarps = kAlignSmallThreads / kWarpSize;
// A warp's run is at most kAlignSmallMaxPairs / warps = kAlignSmallSteps * kWarpSize pairs.
constexpr int kAlignSmallSteps = kAlignSmallMaxPairs / kAlignSmallThreads;
// R: lane l owns experts l*R .. l*R + R-1 in the scan (contiguous: a serial sum in the lane, then one
// shuffle scan over the lanes). 2 on CUDA, 1 on CDNA3.
constexpr int kAlignExpertsPerLane = kAlignSmallMaxExperts / kWarpSize;
static_assert(kAlignSmallMaxPairs % kAlignSmallThreads == 0, "a warp's run must be whole steps");
static_assert(kAlignSmallMaxExperts % kWarpSize == 0, "every lane owns the same number of experts");
static_assert(kAlignSmallMaxPairs <= kAlignPairsPerChunk, "the fast path sorts chunk 0, the only one");

// Whether moe_align_launch takes the fast path (host-visible, CPU-tested).
ZK_HOST_DEVICE bool align_is_small(int32_t num_pairs, int32_t num_experts) {
  return num_pairs <= kAlignSmallMaxPairs && num_experts <= kAlignSmallMaxExperts;
}

struct AlignSmallShared {
  int32_t counts[kAlignSmallWarps][kAlignSmallMaxExperts];   // pairs of each expert in each warp's run
  int32_t running[kAlignSmallWarps][kAlignSmallMaxExperts];  // each warp's next slot of each expert
};

// The scan's result in the registers of the lane that owns expert e = lane * R + r (zeros for e >= E).
// Segments are counted in blocks of block_m, so no slot bound needs a division afterwards.
struct AlignOwnedExperts {
  int32_t total[kAlignExpertsPerLane];        // pairs of the expert
  int32_t first_block[kAlignExpertsPerLane];  // its segment: blocks [first_block, first_block + blocks)
  int32_t blocks[kAlignExpertsPerLane];
  int32_t padded_blocks;                      // blocks of all segments, num_padded / block_m (uniform)
};

// Sum of `value` over lanes 0..lane, for the lanes below `lanes` (uniform; the others get partial sums).
ZK_DEVICE int32_t warp_inclusive_sum(int32_t value, int lanes) {
  const int lane = threadIdx.x % kWarpSize;
  for (int offset = 1; offset < lanes; offset *= 2) {
    const int32_t lower = shfl(value, lane >= offset ? lane - offset : lane);
    if (lane >= offset) value += lower;
  }
  return value;
}

// Step 2, done by every warp on its own: the owned experts' totals over all warps' rows, the segments
// as a shuffle scan of the blocks per expert (3 shuffles for E = 16 on CUDA), and this warp's running
// slot of each expert (segment start + the expert's pairs in earlier warps) into its row of `running`.
ZK_DEVICE AlignOwnedExperts align_small_scan(const MoeAlignParams& p, AlignSmallShared& s) {
  constexpr int R = kAlignExpertsPerLane;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  AlignOwnedExperts own;
  int32_t earlier[R];  // pairs of the expert in the runs of warps before this one
  int32_t lane_blocks = 0;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int e = lane * R + r;
    int32_t total = 0, before = 0;
    if (e < p.num_experts) {
#pragma unroll
      for (int w = 0; w < kAlignSmallWarps; ++w) {
        const int32_t count = s.counts[w][e];
        before += w < warp ? count : 0;
        total += count;
      }
    }
    own.total[r] = total;
    own.blocks[r] = (total + p.block_m - 1) / p.block_m;
    earlier[r] = before;
    lane_blocks += own.blocks[r];
  }
  const int owner_lanes = (p.num_experts + R - 1) / R;
  const int32_t inclusive = warp_inclusive_sum(lane_blocks, owner_lanes);
  own.padded_blocks = shfl(inclusive, owner_lanes - 1);
  int32_t block = inclusive - lane_blocks;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int e = lane * R + r;
    own.first_block[r] = block;
    if (e < p.num_experts) s.running[warp][e] = block * p.block_m + earlier[r];
    block += own.blocks[r];
  }
  return own;
}

// Step 4, every output but the pairs' slots: the padding (fewer than block_m slots) and blocks of the
// experts of owner lane j by warp j % warps (2 experts per warp for E = 16 on CUDA), their bounds
// shuffled from lane j; the slots and blocks past num_padded by the whole CTA; expert_offsets and
// num_padded by warp 0.
ZK_DEVICE void align_small_write_rest(const MoeAlignParams& p, const AlignOwnedExperts& own) {
  constexpr int R = kAlignExpertsPerLane;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int32_t num_pairs = p.num_tokens * p.k;
  for (int owner = warp; owner * R < p.num_experts; owner += kAlignSmallWarps) {
#pragma unroll
    for (int r = 0; r < R; ++r) {  // r stays a constant: a dynamic own.xxx[r] would put `own` on the stack
      const int e = owner * R + r;
      if (e >= p.num_experts) break;  // uniform per warp
      const int32_t first_block = shfl(own.first_block[r], owner);
      const int32_t end_block = first_block + shfl(own.blocks[r], owner);
      const int32_t end = end_block * p.block_m;
      for (int32_t slot = first_block * p.block_m + shfl(own.total[r], owner) + lane; slot < end;
           slot += kWarpSize) {
        p.sorted_token_ids[slot] = num_pairs;
      }
      for (int32_t block = first_block + lane; block < end_block; block += kWarpSize) p.block_expert_ids[block] = e;
    }
  }
  const int32_t num_padded = own.padded_blocks * p.block_m;
  for (int32_t slot = num_padded + threadIdx.x; slot < p.capacity; slot += kAlignSmallThreads) {
    p.sorted_token_ids[slot] = num_pairs;
  }
  for (int32_t block = own.padded_blocks + threadIdx.x; block < p.num_blocks; block += kAlignSmallThreads) {
    p.block_expert_ids[block] = -1;
  }
  if (warp == 0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int e = lane * R + r;
      if (e < p.num_experts) p.expert_offsets[e] = own.first_block[r] * p.block_m;
    }
    if (lane == 0) {
      p.expert_offsets[p.num_experts] = num_padded;
      p.num_padded[0] = num_padded;
    }
  }
}

// One CTA, one block barrier: the only data that crosses warps is the histogram rows, and each warp
// derives everything else from them by itself.
__global__ void __launch_bounds__(kAlignSmallThreads) moe_align_small_kernel(const MoeAlignParams p) {
  allow_dependent_launch();
  wait_for_prerequisite_grids();  // ids (and chunk_counts) come from the kernels before this one
  __shared__ AlignSmallShared s;
  const int warp = threadIdx.x / kWarpSize;
  const AlignLanePairs<kAlignSmallSteps> lp = align_load_pairs<kAlignSmallThreads, kAlignSmallSteps>(p, 0);
  // 1. count into the warp's own row, which the warp zeroes itself: a warp barrier orders the two.
  for (int e = threadIdx.x % kWarpSize; e < p.num_experts; e += kWarpSize) s.counts[warp][e] = 0;
  syncwarp();
  align_count_run(s.counts[warp], lp, p.num_experts);
  __syncthreads();  // the only block barrier: every warp's scan reads every warp's row
  const AlignOwnedExperts own = align_small_scan(p, s);
  syncwarp();  // the running row, written by the scan's lanes, before the scatter's atomics on it
  align_scatter_run(p, s.running[warp], lp);
  align_small_write_rest(p, own);
}

// Programmatic dependent launches (see compat.h): each kernel waits for the previous one before it
// reads ids or chunk_counts, so on CUDA its launch overlaps the router's (or the counting launch's)
// tail. Returns nullptr or the runtime's error message.
inline const char* moe_align_launch(const MoeAlignParams& p, stream_t stream) {
  if (align_is_small(p.num_tokens * p.k, p.num_experts)) {
    return launch_dependent(moe_align_small_kernel, dim3(1), dim3(kAlignSmallThreads), 0, stream, p);
  }
  if (p.num_chunks > 1) {
    if (const char* err = launch_dependent(moe_align_count_kernel, dim3(p.num_chunks), dim3(kAlignThreads), 0, stream, p)) {
      return err;
    }
  }
  return launch_dependent(moe_align_sort_kernel, dim3(p.num_chunks), dim3(kAlignThreads), 0, stream, p);
}

}  // namespace zk
