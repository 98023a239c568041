// SPDX-License-Identifier: Apache-2.0
// launch.h: every kernel launcher, declared once. Each is defined once per backend, in cuda/ or in
// hip/; setup.py compiles exactly one of the two folders, so host code needs no #ifdef.
// The stream is passed as an opaque handle (a cudaStream_t or hipStream_t) so that this header
// needs no runtime header either. Each returns nullptr on success, else the runtime's error
// message, which the host launcher raises as a TORCH_CHECK error naming the op.
#pragma once

#include "params.h"

namespace zk {

using StreamHandle = void*;

const char* launch_topk_gating(const TopkGatingParams& params, StreamHandle stream);
const char* launch_moe_align(const MoeAlignParams& params, StreamHandle stream);
const char* launch_zaya_router(const ZayaRouterParams& params, StreamHandle stream);
// Bytes of device workspace launch_zaya_router needs for these params (params.partials); 0: none.
int64_t zaya_router_workspace_bytes(const ZayaRouterParams& params);
// The router, then moe_align on its ids (params.align): in the router's last kernel where the backend
// can (params.route_ready, see params.h), else as a second launch.
const char* launch_zaya_route(const ZayaRouterParams& params, StreamHandle stream);


// ---- experts launchers ----
const char* launch_grouped_gemm(const GroupedGemmParams& params, StreamHandle stream);
int64_t grouped_gemm_workspace_bytes(const GroupedGemmParams& params);  // params.workspace's size; 0: none
const char* launch_moe_mlp(const MoeMlpParams& params, StreamHandle stream);
int64_t moe_mlp_workspace_bytes(const MoeMlpParams& params);            // params.workspace's size; 0: none

// ---- end experts launchers ----

// ---- CCA attention launchers ----
const char* launch_attention_prefill(const AttentionPrefillParams& params, StreamHandle stream);
const char* launch_cca_prep(const CcaPrepParams& params, StreamHandle stream);
// Split-KV decode: the split kernel, then (params.num_splits > 1) the combine kernel.
const char* launch_attention_decode(const AttentionDecodeParams& params, StreamHandle stream);

// ---- end CCA attention launchers ----

}  // namespace zk
