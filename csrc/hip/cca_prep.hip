// SPDX-License-Identifier: Apache-2.0
// HIP translation unit of cca_prep: the portable kernel (common/cca_prep.cuh) over the gfx942 MFMA step.
#include "cca_prep_gfx942_mfma.h"
#include "../common/cca_prep.cuh"
#include "../common/launch.h"

namespace zk {

const char* launch_cca_prep(const CcaPrepParams& params, StreamHandle stream) {
  using Arch = cca::ArchConfig;
  int device = 0;
  int num_sms = 0;
  hipError_t err = hipGetDevice(&device);
  if (err == hipSuccess) err = hipDeviceGetAttribute(&num_sms, hipDeviceAttributeMultiprocessorCount, device);
  if (err != hipSuccess) return hipGetErrorString(err);
  return cca_prep_launch<Arch>(params, static_cast<stream_t>(stream), num_sms);  // <= 64 KB LDS: no opt-in
}

}  // namespace zk
