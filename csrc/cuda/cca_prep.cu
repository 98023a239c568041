// SPDX-License-Identifier: Apache-2.0
// CUDA translation unit of cca_prep: the portable kernel (common/cca_prep.cuh) over the sm_90a mma.sync step.
#include "cca_prep_sm90_mma.cuh"
#include "../common/cca_prep.cuh"
#include "../common/launch.h"

namespace zk {

const char* launch_cca_prep(const CcaPrepParams& params, StreamHandle stream) {
  using Arch = cca::ArchConfig;
  int device = 0;
  int num_sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
  // Above 48 KB a kernel's dynamic shared memory must be allowed explicitly (per device, so every call).
  for (auto kernel : {cca::cca_prep_kernel<Arch, false>, cca::cca_prep_kernel<Arch, true>}) {
    if (err == cudaSuccess) {
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(cca::Smem<Arch>::kBytes));
    }
  }
  if (err != cudaSuccess) return cudaGetErrorString(err);
  return cca_prep_launch<Arch>(params, static_cast<stream_t>(stream), num_sms);
}

}  // namespace zk
