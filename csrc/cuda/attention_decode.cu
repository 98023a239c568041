// SPDX-License-Identifier: Apache-2.0
// CUDA translation unit of the portable split-KV decode attention (common/attention_decode.cuh), warp 32.
#include "../common/attention_decode.cuh"
#include "../common/launch.h"

namespace zk {

const char* launch_attention_decode(const AttentionDecodeParams& params, StreamHandle stream) {
  return attention_decode_launch(params, static_cast<stream_t>(stream));
}

}  // namespace zk
