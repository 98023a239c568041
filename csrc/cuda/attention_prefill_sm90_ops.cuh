// SPDX-License-Identifier: Apache-2.0
// attention_prefill_sm90_ops.cuh: the instructions the sm_90a prefill attention needs beyond the
// router's wrappers (zaya_router_sm90_load.cuh / _mma.cuh, reused as they are): 3-D and 4-D TMA tile
// loads, the N-major (transposed) shared-memory descriptor and the register-A wgmma that reads V
// through it, a named barrier, and the fast exp2.
#pragma once

#include <cuda.h>
#include <stdint.h>

#include "../common/compat.h"

namespace zk {
namespace sm90 {

// Box at element coordinates (c0 innermost .. c2) of a 3-D tensor map into this CTA's shared memory;
// the barrier's transaction count drops by the box's bytes (out-of-range elements arrive as zeros).
ZK_DEVICE void tma_load_3d(uint32_t dst, const CUtensorMap* map, int32_t c0, int32_t c1, int32_t c2, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];"
      ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

ZK_DEVICE void tma_load_4d(uint32_t dst, const CUtensorMap* map, int32_t c0, int32_t c1, int32_t c2, int32_t c3,
                           uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

// Shared-memory descriptor of an N-major (MN-major, "transposed") B operand stored by TMA with
// 128-byte swizzling: rows of 64 bf16 along N (128 bytes) for one k each, 8-k groups 1024 bytes apart
// (stride byte offset), 64-wide N groups `n_group_bytes` apart (leading byte offset). PTX ISA, "Matrix
// Descriptor" / "Leading / Stride Dimension Byte Offset" for MN-major swizzled layouts. For V [keys, D]
// as the B of O += P V: k = key, N = D; the two 64-column halves of D are the two N groups.
ZK_DEVICE uint64_t wgmma_desc_sw128_n_major(uint32_t addr, uint32_t n_group_bytes) {
  uint64_t desc = 0;
  desc |= static_cast<uint64_t>((addr & 0x3ffffu) >> 4);
  desc |= static_cast<uint64_t>((n_group_bytes >> 4) & 0x3fffu) << 16;  // leading byte offset: next 64 N
  desc |= static_cast<uint64_t>(1024u >> 4) << 32;                      // stride byte offset: next 8 k
  desc |= static_cast<uint64_t>(1u) << 62;                              // layout: 128-byte swizzle
  return desc;
}

// d (64x128 fp32, 64 per thread) += A (64x16 bf16, registers) * B (16x128 bf16, shared, N-major).
ZK_DEVICE void wgmma_m64n128k16_rs_n_major(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n}"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

// Named barrier `id` (1..15; 0 is __syncthreads) over `threads` threads (a multiple of 32).
ZK_DEVICE void named_barrier_sync(uint32_t id, uint32_t threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// 2^x in one MUFU instruction (flush-to-zero; 2^-inf = +0, which the masked logits rely on).
ZK_DEVICE float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace sm90
}  // namespace zk
