// SPDX-License-Identifier: Apache-2.0
// Host launcher of zaya::grouped_gemm: check tensors (the words of zaya_kernels/ops.py
// _check_grouped_gemm, then the kernels' own limits), fill GroupedGemmParams, launch on the current stream.
// The offsets' values (>= 0, non-decreasing, offsets[E] <= M) are the caller's duty on the GPU: checking
// them would read them back to the host.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "../common/launch.h"
#include "checks.h"
#include "experts.h"

namespace zk {
namespace {

constexpr const char* kOp = "zaya::grouped_gemm";

// a [M, K] bf16, w [E, N, K] bf16, expert_offsets [E+1] int32: ops.py's checks, then the kernels' limits.
void check_inputs(const at::Tensor& a, const at::Tensor& w, const at::Tensor& expert_offsets) {
  check_dim(kOp, "a", a, 2);
  ZK_CHECK(a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kFloat, kOp,
           ": a must be torch.bfloat16 or torch.float32, got ", a.scalar_type());
  expect_tensor(kOp, "w", w, a, 3, a.scalar_type());
  ZK_CHECK(w.size(2) == a.size(1), kOp, ": w must be [E, N, K=", a.size(1), "], got ", shape_str(w.sizes()));
  check_same_device(kOp, "expert_offsets", expert_offsets, a);
  check_dtype(kOp, "expert_offsets", expert_offsets, at::kInt);
  check_shape(kOp, "expert_offsets", expert_offsets, {w.size(0) + 1});
  // The kernels' limits.
  TORCH_CHECK_NOT_IMPLEMENTED(a.scalar_type() == at::kBFloat16,
                              message(kOp, ": a must be torch.bfloat16 on ", a.device(),
                                      " (the experts kernels are bf16; torch.float32 runs on the CPU only)"));
  const int64_t m = a.size(0), k = a.size(1), n = w.size(1), experts = w.size(0);
  ZK_CHECK(experts >= 1 && experts <= kExpertsMaxExperts, kOp, ": w must have 1..", kExpertsMaxExperts,
           " experts (w.shape[0]), got ", experts);
  ZK_CHECK(k >= 8 && k % 8 == 0, kOp,
           ": the kernels need K (a.shape[1]) a positive multiple of 8 (16-byte rows), got ", k);
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  // Work items: (M/8 + E token chunks) x (N/16 row tiles) must stay int32 (experts_schedule.h).
  ZK_CHECK(m < kInt32Max && n < kInt32Max && (m / 8 + experts + 1) * ((n + 15) / 16) < kInt32Max, kOp,
           ": M x N too large for int32 tile indices, got M=", m, ", N=", n);
  check_vector_rows(kOp, "a", a);
  check_contiguous(kOp, "w", w);
  ZK_CHECK(reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0, kOp,
           ": w must start on a 16-byte boundary, got address ", w.data_ptr());
  check_contiguous(kOp, "expert_offsets", expert_offsets);
}

void grouped_gemm_out(const at::Tensor& a,               // [M, K] bf16
                      const at::Tensor& w,               // [E, N, K] bf16
                      const at::Tensor& expert_offsets,  // [E+1] int32
                      at::Tensor& out) {                 // [M, N] bf16
  check_inputs(a, w, expert_offsets);
  check_same_device(kOp, "out", out, a);
  check_dtype(kOp, "out", out, a.scalar_type());
  check_shape(kOp, "out", out, {a.size(0), w.size(1)});
  check_last_dim_contiguous(kOp, "out", out);
  if (a.size(0) == 0 || w.size(1) == 0) return;
  const c10::cuda::CUDAGuard device_guard(a.device());
  GroupedGemmParams params{};
  params.a = static_cast<const uint16_t*>(a.data_ptr());
  params.a_row_stride = a.stride(0);
  params.w = static_cast<const uint16_t*>(w.data_ptr());
  params.expert_offsets = expert_offsets.data_ptr<int32_t>();
  params.c = static_cast<uint16_t*>(out.data_ptr());
  params.c_row_stride = out.stride(0);
  params.m = static_cast<int32_t>(a.size(0));
  params.n = static_cast<int32_t>(w.size(1));
  params.k = static_cast<int32_t>(a.size(1));
  params.num_experts = static_cast<int32_t>(w.size(0));
  params.regime = experts_regime_from_env(kOp);
  // The backend's scratch from the caching allocator (stream-ordered: reused only after these kernels).
  at::Tensor scratch;
  if (const int64_t bytes = grouped_gemm_workspace_bytes(params); bytes > 0) {
    scratch = at::empty({bytes}, a.options().dtype(at::kByte));
    params.workspace = scratch.data_ptr();
  }
  check_launch(kOp, launch_grouped_gemm(params, c10::cuda::getCurrentCUDAStream().stream()));
}

at::Tensor grouped_gemm(const at::Tensor& a, const at::Tensor& w, const at::Tensor& expert_offsets) {
  check_inputs(a, w, expert_offsets);
  at::Tensor out = at::empty({a.size(0), w.size(1)}, a.options());
  grouped_gemm_out(a, w, expert_offsets, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(zaya, CUDA, m) {
  m.impl("grouped_gemm", &grouped_gemm);
  m.impl("grouped_gemm.out", &grouped_gemm_out);
}

}  // namespace zk
