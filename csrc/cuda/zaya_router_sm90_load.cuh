// SPDX-License-Identifier: Apache-2.0
// zaya_router_sm90_load.cuh: the data-movement side of the sm_90a router kernels: mbarriers, TMA tile
// loads (plain and multicast to a cluster), thread-block-cluster barriers and distributed shared
// memory (DSMEM) access. Thin inline-PTX wrappers; every shared-memory address is a 32-bit
// shared::cta address (what __cvta_generic_to_shared returns).
#pragma once

#include <cuda.h>  // CUtensorMap (the type only; tensor maps are encoded on the host)
#include <stdint.h>

#include "../common/compat.h"

namespace zk {
namespace sm90 {

ZK_DEVICE uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// ---- mbarrier -------------------------------------------------------------------------------------

ZK_DEVICE void mbar_init(uint32_t bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(arrivals) : "memory");
}

// Makes the initialised barriers visible to the async proxy (TMA) and to the other CTAs of the cluster.
ZK_DEVICE void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }

// Arrive once and add `bytes` to the transaction count the current phase waits for.
ZK_DEVICE void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

// Arrive on the barrier at the same shared-memory offset in CTA `cta_rank` of the cluster (itself too).
// Default (.release.cta) semantics, as CUTLASS's ClusterBarrier: the arrival only says "done reading";
// an explicit .release.cluster would put a MEMBAR.ALL.GPU before every arrival (seen in the SASS).
ZK_DEVICE void mbar_arrive_cluster(uint32_t bar, uint32_t cta_rank) {
  asm volatile(
      "{\n .reg .b32 remote;\n mapa.shared::cluster.u32 remote, %0, %1;\n"
      " mbarrier.arrive.shared::cluster.b64 _, [remote];\n}" ::"r"(bar),
      "r"(cta_rank)
      : "memory");
}

// Default (.acquire.cta) semantics: TMA data is visible once its complete_tx has landed; a
// .acquire.cluster wait would invalidate L1 (CCTL.IVALL) after every wait.
ZK_DEVICE bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      " selp.u32 %0, 1, 0, p;\n}"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}

// Wait until the phase of the given parity has completed.
ZK_DEVICE void mbar_wait(uint32_t bar, uint32_t parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// The same wait with acquire at cluster scope: for a barrier that other CTAs' st.async operations
// complete (their complete_tx releases at cluster scope).
ZK_DEVICE void mbar_wait_cluster(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  }
}

// ---- TMA ------------------------------------------------------------------------------------------

ZK_DEVICE void tma_prefetch_descriptor(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Box at (inner, outer) element coordinates of a 2-D tensor map into this CTA's shared memory; the
// barrier's transaction count drops by the box's bytes (out-of-bounds rows arrive as zeros, counted).
ZK_DEVICE void tma_load_2d(uint32_t dst, const CUtensorMap* map, int32_t inner, int32_t outer, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(inner), "r"(outer), "r"(bar)
      : "memory");
}

// The same box written to the same offset in every CTA of `cta_mask` (bit i = cluster rank i), each
// destination's barrier (same offset) receiving the bytes.
ZK_DEVICE void tma_load_2d_multicast(uint32_t dst, const CUtensorMap* map, int32_t inner, int32_t outer,
                                     uint32_t bar, uint16_t cta_mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(inner), "r"(outer), "r"(bar), "h"(cta_mask)
      : "memory");
}

// Orders this thread's earlier generic-proxy accesses of shared memory before its later async-proxy
// ones (a TMA load into a buffer the CTA has just read).
ZK_DEVICE void fence_proxy_async_shared() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// Start pulling the 128-byte line holding `global` into L2; nothing waits for it, no alignment needed.
ZK_DEVICE void prefetch_l2_line(const void* global) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<uint64_t>(global)) : "memory");
}

// Start pulling `bytes` (a multiple of 16) at a 16-byte aligned global address into L2; nothing waits
// for it.
ZK_DEVICE void prefetch_l2_bulk(const void* global, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(reinterpret_cast<uint64_t>(global)), "r"(bytes)
               : "memory");
}

// Byte offset of element (row, col) of a [rows x 64] bf16 box stored by TMA with 128-byte swizzling:
// 128-byte rows whose 16-byte chunks are permuted by XOR with (row % 8). The box must start on a
// 1024-byte boundary.
ZK_HOST_DEVICE uint32_t swizzle128_offset(uint32_t row, uint32_t col) {
  return row * 128u + ((((col >> 3) ^ row) & 7u) << 4) + (col & 7u) * 2u;
}

// ---- clusters and distributed shared memory -------------------------------------------------------

ZK_DEVICE uint32_t cluster_cta_rank() {
  uint32_t rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  return rank;
}

ZK_DEVICE uint32_t cluster_id_x() {
  uint32_t id;
  asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(id));
  return id;
}

ZK_DEVICE uint32_t cluster_count_x() {
  uint32_t n;
  asm volatile("mov.u32 %0, %%nclusterid.x;" : "=r"(n));
  return n;
}

// Every thread of every CTA of the cluster: release this thread's prior memory operations (local and
// remote shared memory) to the cluster, then wait for all and acquire theirs.
ZK_DEVICE void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// The two halves of cluster_sync, for a barrier whose wait can come much later: arrive (relaxed: it
// orders nothing) at kernel start, wait before the first access to another CTA's shared memory, which
// is only allowed once every CTA of the cluster has started.
ZK_DEVICE void cluster_arrive_relaxed() { asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory"); }
ZK_DEVICE void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;" ::: "memory"); }

// Address of the same shared-memory offset in CTA `cta_rank` of the cluster.
ZK_DEVICE uint32_t dsmem_map(uint32_t local, uint32_t cta_rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(cta_rank));
  return remote;
}

// Asynchronous stores into another CTA's shared memory (`remote`, from dsmem_map) that complete_tx
// `remote_bar` there, a barrier at the same CTA: the receiver waits on its own barrier for the bytes;
// no cluster barrier (whose release fences all of global memory) is needed.
ZK_DEVICE void dsmem_store_async_u32x4(uint32_t remote, uint4 v, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];"
               ::"r"(remote), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(remote_bar)
               : "memory");
}

ZK_DEVICE void dsmem_store_async_f32x2(uint32_t remote, float2 v, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];" ::"r"(remote),
               "f"(v.x), "f"(v.y), "r"(remote_bar)
               : "memory");
}

ZK_DEVICE void dsmem_store_async_f32(uint32_t remote, float v, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(remote),
               "r"(__float_as_uint(v)), "r"(remote_bar)
               : "memory");
}

// Stores a 16-byte piece / a float pair / a float at `local`'s offset in CTA `cta` of the cluster,
// completing the barrier at `bar`'s offset there (both this CTA's shared addresses, mapped).
ZK_DEVICE void push_u32x4(const void* local, const uint64_t* bar, int cta, uint4 v) {
  dsmem_store_async_u32x4(dsmem_map(smem_addr(local), cta), v, dsmem_map(smem_addr(bar), cta));
}

ZK_DEVICE void push_f32x2(const void* local, const uint64_t* bar, int cta, float2 v) {
  dsmem_store_async_f32x2(dsmem_map(smem_addr(local), cta), v, dsmem_map(smem_addr(bar), cta));
}

ZK_DEVICE void push_f32(const void* local, const uint64_t* bar, int cta, float v) {
  dsmem_store_async_f32(dsmem_map(smem_addr(local), cta), v, dsmem_map(smem_addr(bar), cta));
}

}  // namespace sm90
}  // namespace zk
