// SPDX-License-Identifier: Apache-2.0
// Host launcher of zaya::zaya_route: zaya_router, then moe_align on its ids over the E' - 1 experts
// (the skip route, E' - 1, goes to no expert), as one op. The backend decides where the align runs
// (launch_zaya_route): on CUDA inside the router's last kernel up to kRouteFusedMaxTokens tokens,
// through `workspace`, which is zero between calls and which the kernels leave zero.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../common/launch.h"
#include "checks.h"
#include "routing.h"

namespace zk {
namespace {

constexpr const char* kOp = "zaya::zaya_route";

void zaya_route_out(const at::Tensor& x,                         // [T, H] bf16
                    const std::optional<at::Tensor>& r_prev,      // [T, R] bf16
                    const at::Tensor& down_w,                    // [R, H] bf16
                    const at::Tensor& down_b,                    // [R] bf16
                    const std::optional<at::Tensor>& eda_scale,   // [R] bf16
                    const at::Tensor& norm_w,                    // [R] bf16
                    const at::Tensor& fc1_w,                     // [R, R] bf16
                    const at::Tensor& fc1_b,                     // [R] bf16
                    const at::Tensor& fc2_w,                     // [R, R] bf16
                    const at::Tensor& fc2_b,                     // [R] bf16
                    const at::Tensor& out_w,                     // [E', R] bf16
                    const at::Tensor& balancing_bias,            // [E'] fp32
                    at::Tensor& workspace,                       // [kRouteWorkspaceBytes] uint8, zero
                    int64_t block_m, double eps,
                    at::Tensor& weights,                         // [T, 1] fp32
                    at::Tensor& ids,                             // [T, 1] int32
                    at::Tensor& r_out,                           // [T, R] bf16
                    at::Tensor& sorted_token_ids,                // [T + (E'-1)*(block_m-1)] int32
                    at::Tensor& block_expert_ids,                // [ceil(that / block_m)] int32
                    at::Tensor& expert_offsets,                  // [E'] int32
                    at::Tensor& num_padded) {                    // [1] int32
  ZayaRouterParams params = zaya_router_params(kOp, x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w,
                                               fc2_b, out_w, balancing_bias, eps, weights, ids, r_out);
  check_same_device(kOp, "workspace", workspace, x);
  check_dtype(kOp, "workspace", workspace, at::kByte);
  check_shape(kOp, "workspace", workspace, {kRouteWorkspaceBytes});
  check_contiguous(kOp, "workspace", workspace);
  ZK_CHECK(reinterpret_cast<uintptr_t>(workspace.data_ptr()) % 16 == 0, kOp,
           ": workspace must start on a 16-byte boundary (make it with zaya_kernels.route_workspace), got address ",
           workspace.data_ptr());
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor chunk_counts;
  params.align = moe_align_params(kOp, ids, params.num_routes - 1, block_m, sorted_token_ids, block_expert_ids,
                                  expert_offsets, num_padded, chunk_counts);
  params.route_ready = static_cast<uint8_t*>(workspace.data_ptr());
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  if (params.num_tokens == 0) {  // no router launch; the align still writes its (all padding) outputs
    check_launch(kOp, launch_moe_align(params.align, stream));
    return;
  }
  const at::Tensor scratch = zaya_router_scratch(params, x);
  check_launch(kOp, launch_zaya_route(params, stream));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> zaya_route(
    const at::Tensor& x, const std::optional<at::Tensor>& r_prev, const at::Tensor& down_w, const at::Tensor& down_b,
    const std::optional<at::Tensor>& eda_scale, const at::Tensor& norm_w, const at::Tensor& fc1_w,
    const at::Tensor& fc1_b, const at::Tensor& fc2_w, const at::Tensor& fc2_b, const at::Tensor& out_w,
    const at::Tensor& balancing_bias, at::Tensor& workspace, int64_t block_m, double eps) {
  // Sizes for the allocation only: a bad argument is reported by the out form's checks, into empty
  // align outputs where the sizes do not fit (a huge block_m never reaches the allocator).
  const int64_t num_tokens = x.dim() > 0 ? x.size(0) : 0;
  const int64_t width = down_w.dim() > 0 ? down_w.size(0) : 0;
  const int64_t routes = out_w.dim() > 0 ? out_w.size(0) : 0;
  const bool fits = align_sizes_fit(num_tokens, routes - 1, block_m);
  const int64_t experts = fits ? routes - 1 : 0;
  const int64_t bm = fits ? block_m : 1;
  const int64_t capacity = fits ? align_capacity(num_tokens, experts, bm) : 0;
  const auto int32 = x.options().dtype(at::kInt);
  at::Tensor weights = at::empty({num_tokens, 1}, x.options().dtype(at::kFloat));
  at::Tensor ids = at::empty({num_tokens, 1}, int32);
  at::Tensor r_out = at::empty({num_tokens, width}, x.options().dtype(at::kBFloat16));
  at::Tensor sorted_token_ids = at::empty({capacity}, int32);
  at::Tensor block_expert_ids = at::empty({(capacity + bm - 1) / bm}, int32);
  at::Tensor expert_offsets = at::empty({fits ? experts + 1 : 0}, int32);
  at::Tensor num_padded = at::empty({1}, int32);
  zaya_route_out(x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias,
                 workspace, block_m, eps, weights, ids, r_out, sorted_token_ids, block_expert_ids, expert_offsets,
                 num_padded);
  return {weights, ids, r_out, sorted_token_ids, block_expert_ids, expert_offsets, num_padded};
}

}  // namespace

TORCH_LIBRARY_IMPL(zaya, CUDA, m) {
  m.impl("zaya_route", &zaya_route);
  m.impl("zaya_route.out", &zaya_route_out);
}

}  // namespace zk
