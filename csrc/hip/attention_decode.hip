// SPDX-License-Identifier: Apache-2.0
// HIP translation unit of the portable split-KV decode attention (common/attention_decode.cuh), wave 64.
#include "../common/attention_decode.cuh"
#include "../common/launch.h"

namespace zk {

const char* launch_attention_decode(const AttentionDecodeParams& params, StreamHandle stream) {
  return attention_decode_launch(params, static_cast<stream_t>(stream));
}

}  // namespace zk
