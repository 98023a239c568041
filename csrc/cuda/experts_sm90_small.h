// SPDX-License-Identifier: Apache-2.0
// experts_sm90_small.h: the small-token (decode) regime of the experts ops on sm_90a
// (experts_sm90_small.cu; the kernels in experts_sm90_small.cuh), called by the regime dispatch in
// experts_sm90.cu. Host-only declarations, no CUDA headers.
#pragma once

#include <stdint.h>

#include "../common/launch.h"

namespace zk {

// grouped_gemm, every T: the persistent swap-AB kernel (rows outside every segment zeroed in it). No workspace.
const char* launch_grouped_gemm_small_sm90(const GroupedGemmParams& params, StreamHandle stream);
// moe_mlp, every T: fc1 + SwiGLU, fc2 + combine weight (+ the skip rows when k == 1), and for k != 1 the
// combine kernel; params.workspace laid out as params.h says (act, then pair_out when k > 1).
const char* launch_moe_mlp_small_sm90(const MoeMlpParams& params, StreamHandle stream);
int64_t moe_mlp_small_workspace_bytes(const MoeMlpParams& params);

}  // namespace zk
