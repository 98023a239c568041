// SPDX-License-Identifier: Apache-2.0
// compat.h: every spelling difference between CUDA and HIP device code lives here, so portable
// kernels in common/*.cuh contain none. Included only by device translation units (cuda/*.cu,
// hip/*.hip); host launchers in ops/ never include it.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__HIPCC__) || defined(__HIP_PLATFORM_AMD__)
#include <hip/hip_runtime.h>
#define ZK_HIP 1
#else
#include <cuda_runtime.h>
#define ZK_CUDA 1
#endif

#define ZK_DEVICE __device__ __forceinline__
#define ZK_HOST_DEVICE __host__ __device__ __forceinline__

namespace zk {

#if defined(ZK_HIP)
using stream_t = hipStream_t;
// gfx9 (CDNA3, MI300X) runs wave64 only; setup.py builds for gfx942 alone, so the host launch math
// of the HIP translation units may use 64 too. NOTE: never use the builtin `warpSize` as a
// compile-time constant (it is not constexpr since ROCm 7).
constexpr int kWarpSize = 64;
using lane_mask_t = uint64_t;
#else
using stream_t = cudaStream_t;
constexpr int kWarpSize = 32;
using lane_mask_t = uint32_t;
#endif

// ---- warp primitives over the whole warp (all lanes active) -------------------------------------
template <typename T>
ZK_DEVICE T shfl_xor(T v, int lane_mask) {
#if defined(ZK_HIP)
  return __shfl_xor(v, lane_mask);
#else
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
#endif
}

template <typename T>
ZK_DEVICE T shfl(T v, int src_lane) {
#if defined(ZK_HIP)
  return __shfl(v, src_lane);
#else
  return __shfl_sync(0xffffffffu, v, src_lane);
#endif
}

ZK_DEVICE lane_mask_t ballot(bool pred) {
#if defined(ZK_HIP)
  return __ballot(pred);
#else
  return __ballot_sync(0xffffffffu, pred);
#endif
}

ZK_DEVICE int popc(lane_mask_t m) {
#if defined(ZK_HIP)
  return __popcll(m);
#else
  return __popc(m);
#endif
}

// ---- bf16 as raw bits: the same code on both backends, no vendor bf16 header needed ------------
// (Debian's HIP 5.2 has no hip_bf16.h; torch's default flags disable the CUDA bf16 operators.)
using bf16_bits = uint16_t;

ZK_HOST_DEVICE float bf16_to_float(bf16_bits b) {
  union { uint32_t u; float f; } v;
  v.u = static_cast<uint32_t>(b) << 16;
  return v.f;
}

// Round to nearest even; NaN stays a (quiet) NaN.
ZK_HOST_DEVICE bf16_bits float_to_bf16(float f) {
  union { uint32_t u; float f; } v;
  v.f = f;
  if ((v.u & 0x7f800000u) == 0x7f800000u && (v.u & 0x007fffffu) != 0u) {
    return static_cast<bf16_bits>((v.u >> 16) | 0x0040u);
  }
  const uint32_t rounding_bias = 0x7fffu + ((v.u >> 16) & 1u);
  return static_cast<bf16_bits>((v.u + rounding_bias) >> 16);
}

// ---- fast transcendental building blocks (the router's GELU) ---------------------------------------
// One special-function instruction each on the device (CUDA: MUFU.RCP / MUFU.EX2, <= 2 ulp; CDNA3:
// v_rcp_f32 / v_exp_f32, 1 ulp); the correctly rounded library call on the host, where the CPU tests
// evaluate the same formulas.
ZK_HOST_DEVICE float fast_rcp(float x) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#elif defined(__HIP_DEVICE_COMPILE__)
  return __builtin_amdgcn_rcpf(x);
#else
  return 1.0f / x;
#endif
}

ZK_HOST_DEVICE float fast_exp2(float x) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#elif defined(__HIP_DEVICE_COMPILE__)
  return __builtin_amdgcn_exp2f(x);
#else
  return exp2f(x);
#endif
}

template <typename T>
ZK_DEVICE float load_as_float(const T* p);
template <>
ZK_DEVICE float load_as_float<float>(const float* p) { return *p; }
template <>
ZK_DEVICE float load_as_float<bf16_bits>(const bf16_bits* p) { return bf16_to_float(*p); }

// ---- programmatic dependent launch ----------------------------------------------------------------
// CUDA (sm_90+): a kernel launched by launch_dependent may start while the kernel before it on the
// stream is still running; it must call wait_for_prerequisite_grids() before it reads anything that
// kernel wrote (or writes anything it reads). Whatever it does before (barrier setup, weight loads)
// overlaps the previous kernel's tail. allow_dependent_launch() lets the next kernel start early in
// turn. HIP has no such launch: the calls are no-ops and stream order does the waiting.
ZK_DEVICE void allow_dependent_launch() {
#if defined(ZK_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

ZK_DEVICE void wait_for_prerequisite_grids() {
#if defined(ZK_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent launch (CUDA) or
// a plain one (HIP). Returns nullptr or the runtime's error message.
template <typename... Params, typename... Args>
inline const char* launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, stream_t stream,
                                    Args... args) {
#if defined(ZK_HIP)
  hipLaunchKernelGGL(kernel, grid, block, smem, stream, args...);
  const hipError_t err = hipGetLastError();
  return err == hipSuccess ? nullptr : hipGetErrorString(err);
#else
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, args...);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
#endif
}

// nullptr when the last launch on this thread succeeded, else the runtime's message.
inline const char* last_launch_error() {
#if defined(ZK_HIP)
  const hipError_t err = hipGetLastError();
  return err == hipSuccess ? nullptr : hipGetErrorString(err);
#else
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
#endif
}

}  // namespace zk
