// SPDX-License-Identifier: Apache-2.0
// HIP translation unit of the portable top-k gating kernel (common/topk_gating.cuh), wave 64.
#include "../common/topk_gating.cuh"

namespace zk {

const char* launch_topk_gating(const TopkGatingParams& params, StreamHandle stream) {
  topk_gating_launch(params, static_cast<stream_t>(stream));
  return last_launch_error();
}

}  // namespace zk
