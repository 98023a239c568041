// SPDX-License-Identifier: Apache-2.0
// zaya_router_sm90_route.cuh: moe_align inside the router's last kernel (zaya_route, T <= 1024).
//
// Why: as a launch of its own, moe_align added ~2.2-2.5 us to the router at every T <= 1024 (H200,
// route.json at 6fbf075: route - router): its griddepcontrol.wait returns only when the router's grid
// has completed and its writes are flushed (~1.2-1.9 us after the last store, the mlp kernel's
// timeline), then it reads the ids back from L2 and sorts them. Here every CTA that picks a token's
// route also stores route + 1 into byte t of the caller's workspace (zero between calls), and one CTA,
// once its own tokens are done, polls those bytes until all T are nonzero, sorts the routes in shared
// memory, and zeroes the bytes for the next call. A byte is written once per call and read for its
// value, so it needs no fence, no counter and no flag: a nonzero byte is that token's route. Producers
// never wait on the waiter, so the grid makes progress whether or not all of it is resident at once.
#pragma once

#include "zaya_router_sm90_epilogue.cuh"

namespace zk {
namespace sm90 {

constexpr int kFusedChunks = kRouteFusedMaxTokens / 32;  // 32-token chunks, one warp step each
static_assert(kRouteWorkspaceBytes >= kRouteFusedMaxTokens && kRouteFusedMaxTokens % 128 == 0,
              "one workspace byte per token, polled as 32-bit words, whole chunks");
static_assert(kRouterMaxRoutes <= 32, "an expert per lane of one warp in the scan");

// The waiting CTA's scratch (in shared memory its router work no longer needs).
struct FusedAlignSmem {
  uint32_t route_words[kRouteFusedMaxTokens / 4];  // byte b of word w: route + 1 of token 4w + b
  int32_t chunk_slot[kFusedChunks][32];  // [chunk, expert]: its tokens in the chunk, then (after the
                                         // scan) the slot of its first one there
  int32_t first_block[32];               // [expert]: its segment, blocks [first_block, + blocks)
  int32_t blocks[32];
};

ZK_DEVICE void store_relaxed_u8(uint8_t* address, uint32_t value) {
  asm volatile("st.relaxed.gpu.global.u8 [%0], %1;" ::"l"(address), "r"(value) : "memory");
}

ZK_DEVICE uint32_t load_relaxed_u32(const uint32_t* address) {
  uint32_t value;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(value) : "l"(address) : "memory");
  return value;
}

// The router's outputs for token t; with the fused align also its byte of route_ready.
ZK_DEVICE void store_route_outputs(const ZayaRouterParams& p, int64_t token, const RouteChoice& choice) {
  store_route(p, token, choice);
  if (p.route_ready != nullptr) store_relaxed_u8(p.route_ready + token, static_cast<uint32_t>(choice.route) + 1u);
}

// Whether this CTA runs the fused align: the first CTA of the grid's last cluster, the last to be
// scheduled, so that it rarely waits for others.
ZK_DEVICE bool runs_fused_align(const ZayaRouterParams& p, int cluster_size) {
  return p.route_ready != nullptr && blockIdx.x == gridDim.x - cluster_size;
}

// By every thread of the waiting CTA at the kernel's start: what does not depend on the routes, every
// slot the padding value T and every block -1 (of no expert), so that after the last route only the
// tokens' slots and the segments' blocks are left to store (T = 1, block_m = 64: 1 slot and 1 block
// instead of 1009 and 16). The sort's stores come after this CTA's barriers, so they land later.
ZK_DEVICE void prefill_fused_align_outputs(const ZayaRouterParams& p, int thread, int threads) {
  const MoeAlignParams& a = p.align;
  for (int32_t slot = thread; slot < a.capacity; slot += threads) a.sorted_token_ids[slot] = a.num_tokens;
  for (int32_t block = thread; block < a.num_blocks; block += threads) a.block_expert_ids[block] = -1;
}

// The sort, for k = 1 and T <= 1024 (moe_align's contract, params.h MoeAlignParams, without its
// generality): chunk c of 32 tokens is one warp step, __match_any_sync gives each token its rank among
// the chunk's tokens of its expert, lane e of warp 0 turns the per-chunk counts into the slot of each
// expert's first token in each chunk. Why not moe_align's one-CTA sort on the CTA's warps: that took
// the same time here (H200, graph) and made each router kernel 1.1-2K instructions longer than this
// one does (SASS: 5 ballots per walk step, a branch-free and a guarded walk). What the phases cost
// (route at T = 1 / 1024, us, before the prefill): the poll 0.3 / 0.4, the counts 0.3 / 0.4, warp 0's
// scan 0.7 / 0.6, the stores 0.6 / 0.8, the last two mostly the grid's end waiting for their writes
// (bench/NOTES.md).
// Called by every thread of the waiting CTA after its own outputs; `scratch`: shared memory that no
// thread reads or writes any more.
template <int kThreads, class Scratch>
ZK_DEVICE void fused_align(const ZayaRouterParams& p, Scratch& scratch) {
  constexpr int kWarps = kThreads / 32;
  constexpr int kWords = kRouteFusedMaxTokens / 4 / kThreads;  // words each thread polls
  constexpr int kChunksPerWarp = kFusedChunks / kWarps;
  static_assert(kFusedChunks % kWarps == 0 && kRouteFusedMaxTokens / 4 % kThreads == 0, "whole shares");
  static_assert(sizeof(Scratch) >= sizeof(FusedAlignSmem), "the scratch holds the sort's state");
  FusedAlignSmem& s = *reinterpret_cast<FusedAlignSmem*>(&scratch);
  const MoeAlignParams& a = p.align;
  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  const int32_t tokens = static_cast<int32_t>(p.num_tokens);
  const int chunks = (tokens + 31) / 32;
  for (int i = thread; i < kFusedChunks * 32; i += kThreads) (&s.chunk_slot[0][0])[i] = 0;

  // ---- every token's route: a word is complete when none of its bytes below T is zero (the bytes past
  // T are never written: counted as set). All of a thread's words in flight at once; a bound of ~10 s
  // (2e10 SM clocks; the SM's own counter, cheaper to read than the global timer) turns a broken
  // workspace contract into an error, not a hang.
  uint32_t* ready = reinterpret_cast<uint32_t*>(p.route_ready);
  constexpr long long kTimeoutClocks = 20'000'000'000ll;
  const long long start = clock64();
  uint32_t word[kWords], unused[kWords];
#pragma unroll
  for (int j = 0; j < kWords; ++j) {
    const int32_t w = thread + j * kThreads, valid = tokens - 4 * w;
    unused[j] = valid >= 4 ? 0u : valid <= 0 ? ~0u : ~((1u << (8 * valid)) - 1u);
    word[j] = unused[j] == ~0u ? ~0u : load_relaxed_u32(ready + w) | unused[j];
  }
  for (;;) {
    bool complete = true;
#pragma unroll
    for (int j = 0; j < kWords; ++j) {
      if (((word[j] - 0x01010101u) & ~word[j] & 0x80808080u) != 0u) {  // some byte is still zero
        complete = false;
        word[j] = load_relaxed_u32(ready + thread + j * kThreads) | unused[j];
      }
    }
    if (complete) break;
    if (clock64() - start > kTimeoutClocks) __trap();
  }
#pragma unroll
  for (int j = 0; j < kWords; ++j) {
    const int32_t w = thread + j * kThreads;
    if (unused[j] == ~0u) continue;
    s.route_words[w] = word[j];
    ready[w] = 0u;  // for the next call, which starts after this grid has completed
  }
  __syncthreads();  // every route staged, the counts zeroed

  // ---- per chunk: each token's expert (kNone: the skip route or none) and rank, each expert's count
  constexpr int kNone = 32;
  int bucket[kChunksPerWarp], rank[kChunksPerWarp];
#pragma unroll
  for (int i = 0; i < kChunksPerWarp; ++i) {
    const int c = warp + i * kWarps;
    const int32_t token = 32 * c + lane;
    const int id = token < tokens
                       ? static_cast<int>((s.route_words[token / 4] >> (8 * (token % 4))) & 0xffu) - 1
                       : -1;
    bucket[i] = static_cast<unsigned>(id) < static_cast<unsigned>(a.num_experts) ? id : kNone;
    const uint32_t peers = __match_any_sync(0xffffffffu, bucket[i]);
    rank[i] = __popc(peers & ((1u << lane) - 1u));
    if (c < chunks && bucket[i] != kNone && rank[i] == 0) s.chunk_slot[c][bucket[i]] = __popc(peers);
  }
  __syncthreads();

  // ---- warp 0, lane e: expert e's total, its padded segment (a shuffle scan of the blocks), and the
  // slot of its first token in each chunk
  if (warp == 0) {
    int32_t count[kFusedChunks];
    int32_t total = 0;
#pragma unroll
    for (int c = 0; c < kFusedChunks; ++c) {
      count[c] = c < chunks ? s.chunk_slot[c][lane] : 0;
      total += count[c];
    }
    const int32_t blocks = lane < a.num_experts ? (total + a.block_m - 1) / a.block_m : 0;
    int32_t first = blocks;  // inclusive scan, then exclusive
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const int32_t lower = __shfl_up_sync(0xffffffffu, first, offset);
      if (lane >= offset) first += lower;
    }
    const int32_t padded_blocks = __shfl_sync(0xffffffffu, first, 31);
    first -= blocks;
    int32_t slot = first * a.block_m;
#pragma unroll
    for (int c = 0; c < kFusedChunks; ++c) {
      if (c < chunks) s.chunk_slot[c][lane] = slot;
      slot += count[c];
    }
    s.first_block[lane] = first;
    s.blocks[lane] = blocks;
    if (lane < a.num_experts) a.expert_offsets[lane] = first * a.block_m;
    if (lane == 0) {
      a.expert_offsets[a.num_experts] = padded_blocks * a.block_m;
      a.num_padded[0] = padded_blocks * a.block_m;
    }
  }
  __syncthreads();

  // ---- the rest of the outputs (prefill_fused_align_outputs wrote the padding slots and blocks): the
  // tokens' slots and each expert's blocks
#pragma unroll
  for (int i = 0; i < kChunksPerWarp; ++i) {
    const int c = warp + i * kWarps;
    if (c < chunks && bucket[i] != kNone) a.sorted_token_ids[s.chunk_slot[c][bucket[i]] + rank[i]] = 32 * c + lane;
  }
  for (int e = warp; e < a.num_experts; e += kWarps) {
    const int32_t first = s.first_block[e], end_block = first + s.blocks[e];
    for (int32_t block = first + lane; block < end_block; block += 32) a.block_expert_ids[block] = e;
  }
}

}  // namespace sm90
}  // namespace zk
