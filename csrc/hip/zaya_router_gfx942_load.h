// SPDX-License-Identifier: Apache-2.0
// zaya_router_gfx942_load.h: data movement of the gfx942 router. Weights go global -> VGPR (each
// wave owns its 32 weight rows, so nothing is shared and LDS is not needed for them); activations go
// global -> LDS (x) or registers -> LDS (n, h1, h2) and are read back as B operands by all 8 waves.
// Every bulk global access is 16 bytes per lane; every LDS access is 16 bytes per lane except the
// 8-byte activation writes (see act_store_pieces).
#pragma once

#include "zaya_router_gfx942_mfma.h"

namespace zk {
namespace gfx942 {

using router_gfx942::act_read_offset;
using router_gfx942::act_write_offset;
using router_gfx942::x_read_offset;

// ---- global -> registers --------------------------------------------------------------------------

// One lane's K run of a weight row: 4 x global_load_dwordx4 of 64 contiguous bytes. `row` points at
// column 64 kb + 32 h of the lane's row (16-byte aligned: rows of H or 256 bf16, H % 512 == 0).
ZK_DEVICE KRun load_run(const uint16_t* row) {
  const u32x4* src = reinterpret_cast<const u32x4*>(row);
  KRun run;
#pragma unroll
  for (int c = 0; c < 4; ++c) run.q[c] = src[c];
  return run;
}

ZK_DEVICE KRun zero_run() {
  KRun run;
#pragma unroll
  for (int c = 0; c < 4; ++c) run.q[c] = u32x4{0u, 0u, 0u, 0u};
  return run;
}

// 16 bytes of x, read once per kernel: non-temporal, so the streamed activations do not push the
// ~1.3 MB of router weights (re-read by every workgroup) out of the XCD's 4 MB L2.
ZK_DEVICE u32x4 load_x_chunk(const uint16_t* src) {
  return __builtin_nontemporal_load(reinterpret_cast<const u32x4*>(src));
}

// 4 consecutive bf16 (8 bytes, "a piece"): the 4 features of accumulator registers 4g..4g+3.
ZK_DEVICE u32x2 load_piece(const uint16_t* src) { return *reinterpret_cast<const u32x2*>(src); }

ZK_DEVICE float piece_value(u32x2 piece, int e) {
  const uint32_t word = e < 2 ? piece.x : piece.y;
  return bf16_to_float(static_cast<bf16_bits>(e % 2 ? word >> 16 : word & 0xffffu));
}

// A router vector (bf16 [256]) at the 16 features of this lane's accumulator registers, packed.
ZK_DEVICE void load_pieces(const uint16_t* vec, int wave, int lane, u32x2 (&out)[4]) {
#pragma unroll
  for (int g = 0; g < 4; ++g) out[g] = load_piece(vec + acc_feature(wave, lane, 4 * g));
}

// ---- LDS ------------------------------------------------------------------------------------------

ZK_DEVICE u32x4 lds_load16(const uint8_t* smem, int offset) { return *reinterpret_cast<const u32x4*>(smem + offset); }
ZK_DEVICE void lds_store16(uint8_t* smem, int offset, u32x4 v) { *reinterpret_cast<u32x4*>(smem + offset) = v; }
ZK_DEVICE void lds_store8(uint8_t* smem, int offset, u32x2 v) { *reinterpret_cast<u32x2*>(smem + offset) = v; }

// B operand K run of `token` from an x stage (one 64-wide K block, 128-byte rows).
// ds_read_b128 phase = 8 lanes = 8 consecutive tokens, same chunk: 8 distinct bank groups (swizzle).
ZK_DEVICE KRun lds_x_run(const uint8_t* stage, int token, int lane) {
  KRun run;
#pragma unroll
  for (int c = 0; c < 4; ++c) run.q[c] = lds_load16(stage, x_read_offset(token, lane, c));
  return run;
}

// B operand K run of `token` for K block kb (features [64 kb, 64 kb + 64)) from the activation tile.
ZK_DEVICE KRun lds_act_run(const uint8_t* act, int token, int kb, int lane) {
  KRun run;
#pragma unroll
  for (int c = 0; c < 4; ++c) run.q[c] = lds_load16(act, act_read_offset(token, kb, lane, c));
  return run;
}

// Accumulator -> activation tile: the lane's 4 pieces (packed bf16x2 words 2g, 2g+1 = 4 consecutive
// features) of `token`, 8 bytes each. ds_write_b64 phases are 16 lanes (tokens t..t+15, same chunk):
// the swizzle maps tokens t and t + 8 to the same bank pair, a 2-way conflict on writes that are 1/8
// of a layer's LDS traffic (each element is written once and read by all 8 waves).
ZK_DEVICE void act_store_pieces(uint8_t* act, int token, int wave, int lane, const uint32_t (&packed)[8]) {
#pragma unroll
  for (int g = 0; g < 4; ++g) {
    lds_store8(act, act_write_offset(token, wave, lane, g), u32x2{packed[2 * g], packed[2 * g + 1]});
  }
}

}  // namespace gfx942
}  // namespace zk
