// SPDX-License-Identifier: Apache-2.0
// attention_prefill_sm90.cuh: FlashAttention-style prefill over the paged KV cache on sm_90a.
//
// Warp specialisation, 384 threads: warpgroup 0 = producer (its warp 0 issues every TMA load; the
// other three warps only give their registers back), warpgroups 1 and 2 = consumers, each the 64 rows
// (16 tokens x 4 heads) of one half of the 128-row Q tile (see attention_prefill_sm90_schedule.cuh).
// Per tile the producer loads Q once (two boxes {64 of D, 4 heads, 32 tokens}), then the tile's K/V
// blocks of 128 keys, from the last to the first, into a ring of kPrefillStages stages. A block of
// each tensor is 2 D-halves x (128 / box_slots) page chunks, one TMA box {64 of D, 1 head, box_slots
// slots, 1 page} each, box_slots = the largest power of two dividing page_size, at most 128 (page
// size 16: 8 boxes of 16 slots per half; 64: 2 of 64; 256: one of 128, half a page).
// Consumers, per block: S = Q K^T (wgmma m64n128k16, both operands in shared memory), the causal /
// length mask, the online softmax in fp32 with exp2 (the scale folded into log2 units), O = O * c + P V
// (wgmma with P from registers, V read N-major through the transposed descriptor), O in registers.
// This is version 1: each warpgroup runs its softmax and GEMMs back to back (the two warpgroups overlap
// each other only through the warp schedulers); no intra-warpgroup pipelining yet.
//
// Why the online maximum and not CCA's fixed one (issue 13). With |q| = sqrt(D), |k| = sqrt(D)|tau|
// and scale 1/sqrt(D), every logit lies in [-B, B], B = sqrt(D)|tau| = 11.3|tau|, so M = B bounds the
// row maximum and exp(s - M) never overflows. It underflows instead: a row whose best key is at an
// angle to its query (s_max ~ 0, the typical case for unrelated tokens) has every exp(s - B) <= e^-B,
// which is below fp32's smallest normal (e^-87.3; the ex2 here flushes denormals) once |tau| > 7.7, and
// at s_max = -B (all keys opposed) once |tau| > 3.9: the row sum is 0 and the output 0/0. tau is a
// learned, unclamped parameter (clamp_temp is false), this op does not receive it, and it serves any
// q / k (the tests use unnormalised ones), so the bound cannot be assumed. The online maximum costs a
// quad shuffle pair per row and 64 multiplies of O per 128-key block, a few percent of the block.
#pragma once

#include "attention_prefill_sm90_ops.cuh"
#include "attention_prefill_sm90_schedule.cuh"
#include "zaya_router_sm90_load.cuh"
#include "zaya_router_sm90_mma.cuh"

namespace zk {
namespace sm90 {

constexpr int kPrefillThreads = 128 * (1 + kPrefillConsumers);
// 3 x 64 KB of K/V + 32 KB of Q = 224 KB of the 227 KB. Three, because under the overlap schedule a
// warpgroup holds two stages at once (the previous block's V under its PV, the current block's K), and
// the third lets the next block's ~1 us TMA latency hide under this block's ~2 us of math.
constexpr int kPrefillStages = 3;
constexpr int kPrefillHalfBytes = kPrefillBlockKeys * 128;          // [128 keys x 64 of D] bf16
constexpr int kPrefillQHalfBytes = kPrefillRows * 128;              // [128 rows x 64 of D] bf16
constexpr int kPrefillQBytes = 2 * kPrefillQHalfBytes;
constexpr int kPrefillConsumerWarps = 4 * kPrefillConsumers;
// Register budget (setmaxnreg): 64 + 2 x 216 = 496 <= 512 per thread slot of 3 warpgroups. The producer
// warp's tile walk and page lookups spilled at 56; a consumer holds S (64 fp32), O (64 fp32) and P (32
// bf16x2) per thread plus the softmax state, and nothing spills at 216 (ptxas -v, both schedules).
constexpr int kPrefillProducerRegisters = 64;
constexpr int kPrefillConsumerRegisters = 216;
static_assert(kPrefillProducerRegisters + kPrefillConsumers * kPrefillConsumerRegisters <= 512, "register file");
static_assert(kPrefillHeadDim == 128, "two 64-element swizzle halves of D");

// Tensor maps, encoded on the host per call and passed by value (__grid_constant__), 128-byte swizzle.
struct PrefillTensorMaps {
  CUtensorMap q;  // 3-D [T][Hq][D]: box {64, 4, 32}; tokens >= T read as zeros
  CUtensorMap k;  // 4-D [num_pages][page_size][Hkv][D]: box {64, 1, box_slots, 1}; pages out of range: zeros
  CUtensorMap v;  // same as k
};

struct PrefillSmem {
  uint8_t q[2][kPrefillQHalfBytes];  // D-halves of [128 rows = 4 * token + head][64] bf16, swizzled
  struct Stage {
    uint8_t k[2][kPrefillHalfBytes];  // D-halves of [128 keys][64] bf16, swizzled
    uint8_t v[2][kPrefillHalfBytes];
  } stages[kPrefillStages];
  uint64_t q_full;                   // producer's expect_tx + the Q bytes
  uint64_t q_empty;                  // every consumer warp is done with the tile's Q
  uint64_t full[kPrefillStages];     // producer's expect_tx + the K/V bytes
  uint64_t empty[kPrefillStages];    // every consumer warp is done with the stage
};
constexpr int kPrefillSmemBytes = static_cast<int>(sizeof(PrefillSmem)) + 1024;  // + alignment slack
static_assert(sizeof(PrefillSmem::Stage) % 1024 == 0 && kPrefillQHalfBytes % 1024 == 0, "1024-byte aligned boxes");
static_assert(kPrefillSmemBytes <= 227 * 1024, "fits one SM's shared memory");

ZK_DEVICE uint8_t* prefill_align_smem(uint8_t* raw) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(raw));
  return raw + ((1024u - (addr & 1023u)) & 1023u);
}

template <int kRegisters>
ZK_DEVICE void prefill_setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegisters));
}
template <int kRegisters>
ZK_DEVICE void prefill_setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegisters));
}

// Running position in the stage ring, identical in the producer and the consumers.
struct PrefillRing {
  int stage = 0;
  uint32_t phase = 0;
  ZK_DEVICE void advance() {
    if (++stage == kPrefillStages) {
      stage = 0;
      phase ^= 1u;
    }
  }
};

// Rows of one box: the largest power of two dividing page_size, at most 128, so a box never crosses
// a page and 128 / box_slots boxes tile a block.
ZK_HOST_DEVICE int32_t prefill_box_slots(int32_t page_size) {
  const int32_t low_bit = page_size & -page_size;
  return low_bit < kPrefillBlockKeys ? low_bit : kPrefillBlockKeys;
}

// ---- producer (warp 0: lane 0 drives the barriers, all lanes issue the page boxes) ------------------

// Pages of fewer than 8 slots (the model's tests use 2 and 4): a TMA box of under 8 rows of 128 bytes
// would start off the 1024-byte boundary that 128-byte swizzling needs, so the warp copies the block
// itself: 16-byte loads, stores at the swizzled offsets TMA would have used (zaya_router_sm90_load.cuh
// swizzle128_offset), keys past the sequence and pages outside the cache as zeros. Then the proxy
// fence (the tensor cores read what generic stores wrote) and one plain arrival on the full barrier.
ZK_DEVICE void prefill_copy_small_pages(const AttentionPrefillParams& p, const PrefillTile& tile, const int32_t* pages,
                                        int32_t key0, PrefillSmem::Stage& stage, uint32_t full, int lane) {
  const PagedKvCache& c = p.cache;
  constexpr int kPieces = 2 * kPrefillBlockKeys * 16;  // (tensor, key row, 16-byte piece of the 256-byte row)
#pragma unroll 1
  for (int item = lane; item < kPieces; item += 32) {
    const int piece = item % 16, row = (item / 16) % kPrefillBlockKeys, tensor = item / (16 * kPrefillBlockKeys);
    const int half = piece / 8;
    const int32_t key = key0 + row;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (key < tile.seq_len_k && key / c.page_size < c.max_pages) {
      const int32_t page = pages[key / c.page_size];
      if (page >= 0 && page < c.num_pages) {
        const int64_t slot = static_cast<int64_t>(page) * c.page_size + key % c.page_size;
        const uint16_t* src = (tensor ? c.v : c.k) + (slot * c.kv_heads + tile.kv_head) * kPrefillHeadDim + piece * 8;
        value = *reinterpret_cast<const uint4*>(src);
      }
    }
    uint8_t* dst = tensor ? stage.v[half] : stage.k[half];
    *reinterpret_cast<uint4*>(dst + swizzle128_offset(row, (piece % 8) * 8)) = value;
  }
  fence_proxy_async_shared();
  __syncwarp();
  if (lane == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(full) : "memory");
}

ZK_DEVICE void prefill_producer(const PrefillTensorMaps& maps, const AttentionPrefillParams& p, PrefillSmem& s,
                                int lane) {
  const PagedKvCache& c = p.cache;
  const int32_t box_slots = prefill_box_slots(c.page_size);
  const int32_t chunks = kPrefillBlockKeys / box_slots;
  const uint32_t q_full = smem_addr(&s.q_full), q_empty = smem_addr(&s.q_empty);
  PrefillCursor cursor;
  PrefillRing ring;
  uint32_t q_phase = 0;
  PrefillTile tile;
  for (int turn = 0; prefill_next_tile(p, turn, cursor, lane, tile); ++turn) {
    if (lane == 0) {
      mbar_wait(q_empty, q_phase ^ 1u);
      mbar_arrive_expect_tx(q_full, kPrefillQBytes);
      for (int half = 0; half < 2; ++half) {
        tma_load_3d(smem_addr(s.q[half]), &maps.q, 64 * half, kPrefillGroup * tile.kv_head, tile.token0, q_full);
      }
    }
    q_phase ^= 1u;
    const int32_t* pages = c.block_table + static_cast<int64_t>(tile.batch_index) * c.block_table_row_stride;
    for (int block = tile.blocks - 1; block >= 0; --block) {
      const int32_t key0 = block * kPrefillBlockKeys;
      // Chunks starting at or past seq_len_k are not loaded: their K rows are masked and the consumers
      // zero their V rows (a partial block's tail holds whatever the cache or the previous tile left).
      const int32_t loaded = min(chunks, (tile.seq_len_k - key0 + box_slots - 1) / box_slots);
      const uint32_t full = smem_addr(&s.full[ring.stage]);
      PrefillSmem::Stage& stage = s.stages[ring.stage];
      if (lane == 0) mbar_wait(smem_addr(&s.empty[ring.stage]), ring.phase ^ 1u);
      __syncwarp();
      if (box_slots < 8) {
        prefill_copy_small_pages(p, tile, pages, key0, stage, full, lane);
        ring.advance();
        continue;
      }
      if (lane == 0) mbar_arrive_expect_tx(full, static_cast<uint32_t>(4 * loaded * box_slots * 128));
      __syncwarp();
      for (int item = lane; item < 4 * loaded; item += 32) {  // (tensor, half, chunk)
        const int chunk = item % loaded, half = (item / loaded) % 2, tensor = item / (2 * loaded);
        const int32_t key = key0 + chunk * box_slots;
        const int32_t logical = key / c.page_size;
        // A page past the block-table row (a caller error) reads as the out-of-range page: zeros.
        const int32_t page = logical < c.max_pages ? pages[logical] : c.num_pages;
        const uint32_t dst = smem_addr(tensor ? stage.v[half] : stage.k[half]) + chunk * box_slots * 128;
        tma_load_4d(dst, tensor ? &maps.v : &maps.k, 64 * half, tile.kv_head, key % c.page_size, page, full);
      }
      ring.advance();
    }
  }
}

// ---- consumers --------------------------------------------------------------------------------------

// Every consumer warp signals that it is done with a buffer (barrier count kPrefillConsumerWarps).
ZK_DEVICE void prefill_release(uint64_t* bar, int lane) {
  __syncwarp();
  if (lane == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

// Zeroes the V rows [valid, 128) of a stage (both D-halves) with all consumer threads, then makes the
// stores visible to the tensor cores (async proxy) and waits for every consumer thread.
ZK_DEVICE void prefill_zero_v_tail(PrefillSmem::Stage& stage, int valid, int consumer_thread) {
  const int first = valid * 8;  // 16-byte pieces: 8 per 128-byte row
  for (int piece = first + consumer_thread; piece < kPrefillBlockKeys * 8; piece += 128 * kPrefillConsumers) {
    *reinterpret_cast<uint4*>(stage.v[0] + piece * 16) = make_uint4(0, 0, 0, 0);
    *reinterpret_cast<uint4*>(stage.v[1] + piece * 16) = make_uint4(0, 0, 0, 0);
  }
  fence_proxy_async_shared();
  named_barrier_sync(1, 128 * kPrefillConsumers);
}

ZK_DEVICE float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

ZK_DEVICE float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The online-softmax state of this thread's two rows (a and b = a + 8 of the wgmma D layout).
struct PrefillRows {
  int32_t limit_a, limit_b;  // highest key each row may see
  float max_a = -INFINITY, max_b = -INFINITY;  // running maxima of the scaled logits (log2 units)
  float sum_a = 0.f, sum_b = 0.f;              // this thread's share of the running row sums
};

// S = Q K^T for one block: 8 k16 steps over D (4 per 128-byte half); issued, not committed.
ZK_DEVICE void prefill_issue_scores(float (&sc)[64], uint32_t q_base, const PrefillSmem::Stage& stage) {
#pragma unroll
  for (int step = 0; step < 8; ++step) {
    const uint32_t k_off = (step % 4) * 32;
    wgmma_m64n128k16_ss(sc, wgmma_desc_sw128(q_base + (step / 4) * kPrefillQHalfBytes + k_off),
                        wgmma_desc_sw128(smem_addr(stage.k[step / 4]) + k_off), step > 0);
  }
}

// O += P V for one block: 8 k16 steps over its keys; V N-major, its D-halves 16 KB apart; issued only.
ZK_DEVICE void prefill_issue_pv(float (&o)[64], const uint32_t (&pf)[8][4], const PrefillSmem::Stage& stage) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    wgmma_m64n128k16_rs_n_major(o, pf[kk], wgmma_desc_sw128_n_major(smem_addr(stage.v[0]) + kk * 2048,
                                                                     kPrefillHalfBytes));
  }
}

// Masks and exponentiates one block of logits in place (sc becomes P in fp32), updates the row maxima
// and sums, and returns the factors by which O (accumulated under the old maxima) must be rescaled.
// softmax_scale > 0 (the op's contract), so max(scale * s) = scale * max(s): the scale folds into one
// FFMA per logit, exp2(s * scale_log2 - max).
ZK_DEVICE float2 prefill_softmax_block(float (&sc)[64], int32_t key0, float scale_log2, int quad, PrefillRows& r) {
  const bool masked = key0 + kPrefillBlockKeys - 1 > min(r.limit_a, r.limit_b);
  float raw_max_a = -INFINITY, raw_max_b = -INFINITY;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (masked) {
        const int32_t key = key0 + 8 * i + 2 * quad + e;
        sc[4 * i + e] = key <= r.limit_a ? sc[4 * i + e] : -INFINITY;
        sc[4 * i + 2 + e] = key <= r.limit_b ? sc[4 * i + 2 + e] : -INFINITY;
      }
      raw_max_a = fmaxf(raw_max_a, sc[4 * i + e]);
      raw_max_b = fmaxf(raw_max_b, sc[4 * i + 2 + e]);
    }
  }
  const float new_max_a = fmaxf(r.max_a, quad_max(raw_max_a) * scale_log2);
  const float new_max_b = fmaxf(r.max_b, quad_max(raw_max_b) * scale_log2);
  // A row with no visible key yet keeps max -inf: subtract 0 instead, so exp2(-inf - 0) = 0, not NaN.
  const float base_a = new_max_a == -INFINITY ? 0.f : new_max_a;
  const float base_b = new_max_b == -INFINITY ? 0.f : new_max_b;
  const float2 rescale = make_float2(exp2_approx(r.max_a - base_a), exp2_approx(r.max_b - base_b));
  r.max_a = new_max_a;
  r.max_b = new_max_b;
  float block_sum_a = 0.f, block_sum_b = 0.f;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      sc[4 * i + e] = exp2_approx(fmaf(sc[4 * i + e], scale_log2, -base_a));
      sc[4 * i + 2 + e] = exp2_approx(fmaf(sc[4 * i + 2 + e], scale_log2, -base_b));
      block_sum_a += sc[4 * i + e];
      block_sum_b += sc[4 * i + 2 + e];
    }
  }
  r.sum_a = r.sum_a * rescale.x + block_sum_a;
  r.sum_b = r.sum_b * rescale.y + block_sum_b;
  return rescale;
}

ZK_DEVICE void prefill_rescale(float (&o)[64], float2 rescale) {
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    o[4 * i + 0] *= rescale.x;
    o[4 * i + 1] *= rescale.x;
    o[4 * i + 2] *= rescale.y;
    o[4 * i + 3] *= rescale.y;
  }
}

// P as bf16 A fragments: k-block kk = keys 16kk..16kk+15 (zaya_router_sm90_mma.cuh layout note).
ZK_DEVICE void prefill_pack_p(uint32_t (&pf)[8][4], const float (&sc)[64]) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
#pragma unroll
    for (int w = 0; w < 4; ++w) pf[kk][w] = pack_bf16x2_rn(sc[8 * kk + 2 * w], sc[8 * kk + 2 * w + 1]);
  }
}

ZK_DEVICE void fence_fragments(uint32_t (&pf)[8][4]) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk)
#pragma unroll
    for (int w = 0; w < 4; ++w) asm volatile("" : "+r"(pf[kk][w])::"memory");
}

// Waits for a K/V stage; keys past the sequence have p = 0, but 0 * (NaN or inf left in V) is NaN, so a
// block that reaches past seq_len_k gets those V rows zeroed (by both consumer warpgroups together).
ZK_DEVICE PrefillSmem::Stage& prefill_wait_block(PrefillSmem& s, const PrefillRing& ring, int32_t key0,
                                                 int32_t seq_len_k) {
  PrefillSmem::Stage& stage = s.stages[ring.stage];
  mbar_wait(smem_addr(&s.full[ring.stage]), ring.phase);
  if (key0 + kPrefillBlockKeys > seq_len_k) prefill_zero_v_tail(stage, seq_len_k - key0, threadIdx.x - 128);
  return stage;
}

// kOverlap = false: per block S, softmax, PV back to back (version 1). kOverlap = true: FlashAttention-3's
// intra-warpgroup overlap: the PV of block j+1 (the previous one) runs on the tensor cores while the
// softmax of block j runs on the FMA / MUFU units; the stage of block j+1 is released only then.
template <bool kOverlap>
ZK_DEVICE void prefill_consumer(const AttentionPrefillParams& p, PrefillSmem& s) {
  const int consumer = threadIdx.x / 128 - 1;  // which 64-row half of the tile
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, quad = lane % 4;
  // This thread's two rows of the wgmma D layout: R = 64 consumer + 16 warp + g and R + 8, i.e. tokens
  // R / 4 and R / 4 + 2 of the tile, both of query head (R % 4) = g % 4 of the KV head's group.
  const int token_a = 16 * consumer + 4 * warp + g / 4;
  const int token_b = token_a + 2;
  const int head_in_group = g % 4;
  // Logits in log2 units: exp(scale * s - m) = 2^(scale * log2(e) * s - m').
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
  const uint32_t q_base = smem_addr(s.q[0]) + consumer * (64 * 128);
  PrefillCursor cursor;
  PrefillRing ring;
  uint32_t q_phase = 0;
  PrefillTile tile;
  for (int turn = 0; prefill_next_tile(p, turn, cursor, lane, tile); ++turn) {
    // Rows past the sequence see keys as if it went on; they are not stored.
    PrefillRows rows;
    const int32_t last_key = tile.seq_len_k - 1;
    rows.limit_a = p.causal ? min(tile.pos0 + token_a, last_key) : last_key;
    rows.limit_b = p.causal ? min(tile.pos0 + token_b, last_key) : last_key;
    float o[64], sc[64];
    uint32_t pf[8][4];
    zero_accumulators(o);
    zero_accumulators(sc);
    mbar_wait(smem_addr(&s.q_full), q_phase);
    q_phase ^= 1u;
    if (tile.blocks == 0) prefill_release(&s.q_empty, lane);
    if constexpr (!kOverlap) {
      for (int block = tile.blocks - 1; block >= 0; --block) {
        const int32_t key0 = block * kPrefillBlockKeys;
        PrefillSmem::Stage& stage = prefill_wait_block(s, ring, key0, tile.seq_len_k);
        wgmma_fence();
        prefill_issue_scores(sc, q_base, stage);
        wgmma_commit();
        wgmma_wait<0>();
        fence_registers(sc);
        if (block == 0) prefill_release(&s.q_empty, lane);
        prefill_rescale(o, prefill_softmax_block(sc, key0, scale_log2, quad, rows));
        prefill_pack_p(pf, sc);
        wgmma_fence();
        prefill_issue_pv(o, pf, stage);
        wgmma_commit();
        wgmma_wait<0>();
        fence_registers(o);
        prefill_release(&s.empty[ring.stage], lane);
        ring.advance();
      }
    } else if (tile.blocks > 0) {
      // The first (highest) block: its scores alone.
      int32_t block = tile.blocks - 1;
      PrefillSmem::Stage* previous = &prefill_wait_block(s, ring, block * kPrefillBlockKeys, tile.seq_len_k);
      int previous_stage = ring.stage;
      wgmma_fence();
      prefill_issue_scores(sc, q_base, *previous);
      wgmma_commit();
      wgmma_wait<0>();
      fence_registers(sc);
      if (block == 0) prefill_release(&s.q_empty, lane);
      prefill_softmax_block(sc, block * kPrefillBlockKeys, scale_log2, quad, rows);  // O is 0: no rescale
      prefill_pack_p(pf, sc);
      ring.advance();
      for (--block; block >= 0; --block) {
        const int32_t key0 = block * kPrefillBlockKeys;
        PrefillSmem::Stage& stage = prefill_wait_block(s, ring, key0, tile.seq_len_k);
        wgmma_fence();
        prefill_issue_scores(sc, q_base, stage);  // S of this block ...
        wgmma_commit();
        prefill_issue_pv(o, pf, *previous);       // ... while P V of the previous one accumulates
        wgmma_commit();
        wgmma_wait<1>();
        fence_registers(sc);
        if (block == 0) prefill_release(&s.q_empty, lane);
        const float2 rescale = prefill_softmax_block(sc, key0, scale_log2, quad, rows);
        wgmma_wait<0>();
        fence_registers(o);
        fence_fragments(pf);
        prefill_release(&s.empty[previous_stage], lane);
        prefill_rescale(o, rescale);
        prefill_pack_p(pf, sc);
        previous = &stage;
        previous_stage = ring.stage;
        ring.advance();
      }
      wgmma_fence();
      prefill_issue_pv(o, pf, *previous);
      wgmma_commit();
      wgmma_wait<0>();
      fence_registers(o);
      prefill_release(&s.empty[previous_stage], lane);
    }

    // ---- epilogue: O / row sum, bf16, straight to global (rows past the sequence are not stored)
    const float total_a = quad_sum(rows.sum_a), total_b = quad_sum(rows.sum_b);
    // A row that saw no key (only for n_b > seq_len_k, a caller error) is written as zeros.
    const float inv_a = total_a > 0.f ? 1.f / total_a : 0.f;
    const float inv_b = total_b > 0.f ? 1.f / total_b : 0.f;
    const int64_t head = static_cast<int64_t>(kPrefillGroup * tile.kv_head + head_in_group);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int token = r ? token_b : token_a;
      if (token >= tile.tokens) continue;
      const float inv = r ? inv_b : inv_a;
      uint16_t* row = p.out + static_cast<int64_t>(tile.token0 + token) * p.out_token_stride + head * p.out_head_stride;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        *reinterpret_cast<uint32_t*>(row + 8 * i + 2 * quad) =
            pack_bf16x2_rn(o[4 * i + 2 * r] * inv, o[4 * i + 2 * r + 1] * inv);
      }
    }
  }
}

template <bool kOverlap>
__global__ void __launch_bounds__(kPrefillThreads, 1)
    attention_prefill_kernel(const __grid_constant__ PrefillTensorMaps maps, const AttentionPrefillParams p) {
  extern __shared__ uint8_t smem_raw[];
  PrefillSmem& s = *reinterpret_cast<PrefillSmem*>(prefill_align_smem(smem_raw));
  if (threadIdx.x == 0) {
    mbar_init(smem_addr(&s.q_full), 1);
    mbar_init(smem_addr(&s.q_empty), kPrefillConsumerWarps);
    for (int i = 0; i < kPrefillStages; ++i) {
      mbar_init(smem_addr(&s.full[i]), 1);
      mbar_init(smem_addr(&s.empty[i]), kPrefillConsumerWarps);
    }
    mbar_init_fence();
    tma_prefetch_descriptor(&maps.q);
    tma_prefetch_descriptor(&maps.k);
    tma_prefetch_descriptor(&maps.v);
  }
  __syncthreads();
  wait_for_prerequisite_grids();  // q and the cache may come from the kernel before this one
  if (threadIdx.x < 128) {
    prefill_setmaxnreg_dec<kPrefillProducerRegisters>();
    if (threadIdx.x < 32) prefill_producer(maps, p, s, threadIdx.x);
  } else {
    prefill_setmaxnreg_inc<kPrefillConsumerRegisters>();
    prefill_consumer<kOverlap>(p, s);
  }
}

}  // namespace sm90
}  // namespace zk
