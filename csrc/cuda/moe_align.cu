// SPDX-License-Identifier: Apache-2.0
// CUDA translation unit of the portable moe_align kernels (common/moe_align.cuh), warp 32.
#include "../common/moe_align.cuh"

namespace zk {

const char* launch_moe_align(const MoeAlignParams& params, StreamHandle stream) {
  return moe_align_launch(params, static_cast<stream_t>(stream));
}

}  // namespace zk
