// SPDX-License-Identifier: Apache-2.0
// Host launcher of zaya::zaya_router: check tensors, fill ZayaRouterParams, choose the variant by T,
// launch on the current stream. The kernel path takes the router exactly as ZAYA1 stores it: every
// weight and vector bf16 (balancing_bias fp32), R = 256, H a multiple of 512 up to 2048, E' <= 32.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "../common/launch.h"
#include "checks.h"
#include "routing.h"

namespace zk {
namespace {

constexpr const char* kOp = "zaya::zaya_router";

void check_param(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x, at::ScalarType dtype,
                 std::vector<int64_t> shape) {
  check_same_device(op, name, t, x);
  ZK_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype,
              " (the kernel takes the router's parameters as stored), got ", t.scalar_type());
  check_shape(op, name, t, std::move(shape));
  check_contiguous(op, name, t);
  ZK_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, op, ": ", name,
              " must start on a 16-byte boundary (TMA), got address ", t.data_ptr());
}

// Row-major [T, C] activations with 16-byte aligned rows: contiguous last dim, row stride a multiple of 8.
void check_rows(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x, at::ScalarType dtype,
                std::vector<int64_t> shape) {
  check_same_device(op, name, t, x);
  check_dtype(op, name, t, dtype);
  check_shape(op, name, t, std::move(shape));
  check_last_dim_contiguous(op, name, t);
  ZK_CHECK(t.size(0) <= 1 || t.stride(0) % 8 == 0, op, ": ", name,
              " rows must be 16-byte aligned (row stride a multiple of 8 elements), got strides ",
              shape_str(t.strides()));
  ZK_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, op, ": ", name,
              " must start on a 16-byte boundary, got address ", t.data_ptr());
}

// Variant by token count; ZAYA_ROUTER_VARIANT=cluster|split|tile forces one (benchmarks measure the
// crossover), split16|split16p|split16c|split32|split48 the split variant with one group shape (tests).
void choose_variant(const char* op, int64_t num_tokens, ZayaRouterParams& params) {
  params.split_group = SplitGroup::kAuto;
  if (const char* forced = std::getenv("ZAYA_ROUTER_VARIANT"); forced != nullptr && forced[0] != '\0') {
    constexpr struct {
      const char* name;
      ZayaRouterVariant variant;
      SplitGroup group;
    } kForced[] = {{"cluster", ZayaRouterVariant::kCluster, SplitGroup::kAuto},
                   {"tile", ZayaRouterVariant::kTile, SplitGroup::kAuto},
                   {"split", ZayaRouterVariant::kSplit, SplitGroup::kAuto},
                   {"split16", ZayaRouterVariant::kSplit, SplitGroup::k16},
                   {"split16p", ZayaRouterVariant::kSplit, SplitGroup::k16Pair},
                   {"split16c", ZayaRouterVariant::kSplit, SplitGroup::k16Compact},
                   {"split32", ZayaRouterVariant::kSplit, SplitGroup::k32},
                   {"split48", ZayaRouterVariant::kSplit, SplitGroup::k48}};
    for (const auto& f : kForced) {
      if (std::strcmp(forced, f.name) == 0) {
        params.variant = f.variant;
        params.split_group = f.group;
        return;
      }
    }
    ZK_CHECK(false, op, ": ZAYA_ROUTER_VARIANT must be cluster, tile, split, split16, split16p, split16c, split32, ",
             "split48 or unset, got '", forced, "'");
  }
  if (num_tokens <= kRouterClusterMaxTokens) {
    params.variant = ZayaRouterVariant::kCluster;
  } else {
    params.variant = num_tokens <= kRouterSplitMaxTokens ? ZayaRouterVariant::kSplit : ZayaRouterVariant::kTile;
  }
}

}  // namespace

ZayaRouterParams zaya_router_params(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& r_prev,
                                    const at::Tensor& down_w, const at::Tensor& down_b,
                                    const std::optional<at::Tensor>& eda_scale, const at::Tensor& norm_w,
                                    const at::Tensor& fc1_w, const at::Tensor& fc1_b, const at::Tensor& fc2_w,
                                    const at::Tensor& fc2_b, const at::Tensor& out_w, const at::Tensor& balancing_bias,
                                    double eps, const at::Tensor& weights, const at::Tensor& ids,
                                    const at::Tensor& r_out) {
  check_dim(op, "x", x, 2);
  check_dim(op, "down_w", down_w, 2);
  check_dim(op, "out_w", out_w, 2);
  const int64_t num_tokens = x.size(0);
  const int64_t hidden = x.size(1);
  const int64_t routes = out_w.size(0);
  ZK_CHECK(down_w.size(0) == kRouterWidth, op, ": the kernel needs the router width R = ", kRouterWidth,
              " (down_w [R, H]), got down_w of shape ", shape_str(down_w.sizes()));
  ZK_CHECK(hidden % kRouterHiddenStep == 0 && hidden >= kRouterHiddenStep && hidden <= kRouterMaxHidden, op,
              ": the kernel needs H (x.size(1)) a multiple of ", kRouterHiddenStep, " in [", kRouterHiddenStep,
              ", ", kRouterMaxHidden, "], got ", hidden);
  ZK_CHECK(routes >= 2 && routes <= kRouterMaxRoutes, op, ": out_w must have 2..", kRouterMaxRoutes,
              " rows (experts + skip route), got ", routes);
  check_rows(op, "x", x, x, at::kBFloat16, {num_tokens, hidden});
  check_param(op, "down_w", down_w, x, at::kBFloat16, {kRouterWidth, hidden});
  check_param(op, "down_b", down_b, x, at::kBFloat16, {kRouterWidth});
  check_param(op, "norm_w", norm_w, x, at::kBFloat16, {kRouterWidth});
  check_param(op, "fc1_w", fc1_w, x, at::kBFloat16, {kRouterWidth, kRouterWidth});
  check_param(op, "fc1_b", fc1_b, x, at::kBFloat16, {kRouterWidth});
  check_param(op, "fc2_w", fc2_w, x, at::kBFloat16, {kRouterWidth, kRouterWidth});
  check_param(op, "fc2_b", fc2_b, x, at::kBFloat16, {kRouterWidth});
  check_param(op, "out_w", out_w, x, at::kBFloat16, {routes, kRouterWidth});
  check_param(op, "balancing_bias", balancing_bias, x, at::kFloat, {routes});
  if (r_prev.has_value()) {
    check_rows(op, "r_prev", *r_prev, x, at::kBFloat16, {num_tokens, kRouterWidth});
    ZK_CHECK(eda_scale.has_value(), op, ": eda_scale is required when r_prev is given");
  } else {
    ZK_CHECK(!eda_scale.has_value(), op, ": eda_scale must be None when r_prev is None (no EDA term without r_prev)");
  }
  if (eda_scale.has_value()) check_param(op, "eda_scale", *eda_scale, x, at::kBFloat16, {kRouterWidth});
  check_finite_positive(op, "eps", eps);
  check_same_device(op, "weights", weights, x);
  check_dtype(op, "weights", weights, at::kFloat);
  check_shape(op, "weights", weights, {num_tokens, 1});
  check_same_device(op, "ids", ids, x);
  check_dtype(op, "ids", ids, at::kInt);
  check_shape(op, "ids", ids, {num_tokens, 1});
  check_rows(op, "r_out", r_out, x, at::kBFloat16, {num_tokens, kRouterWidth});

  auto bf16 = [](const at::Tensor& t) { return static_cast<const uint16_t*>(t.data_ptr()); };
  ZayaRouterParams params{};
  params.x = bf16(x);
  params.x_row_stride = x.stride(0);
  params.r_prev = r_prev.has_value() ? bf16(*r_prev) : nullptr;
  params.r_prev_row_stride = r_prev.has_value() ? r_prev->stride(0) : 0;
  params.down_w = bf16(down_w);
  params.down_b = bf16(down_b);
  params.eda_scale = r_prev.has_value() ? bf16(*eda_scale) : nullptr;
  params.norm_w = bf16(norm_w);
  params.fc1_w = bf16(fc1_w);
  params.fc1_b = bf16(fc1_b);
  params.fc2_w = bf16(fc2_w);
  params.fc2_b = bf16(fc2_b);
  params.out_w = bf16(out_w);
  params.balancing_bias = balancing_bias.data_ptr<float>();
  params.weights = weights.data_ptr<float>();
  params.weights_row_stride = weights.stride(0);
  params.ids = ids.data_ptr<int32_t>();
  params.ids_row_stride = ids.stride(0);
  params.r_out = static_cast<uint16_t*>(r_out.data_ptr());
  params.r_out_row_stride = r_out.stride(0);
  params.num_tokens = num_tokens;
  params.hidden = static_cast<int32_t>(hidden);
  params.num_routes = static_cast<int32_t>(routes);
  params.eps = static_cast<float>(eps);
  choose_variant(op, num_tokens, params);
  return params;
}

at::Tensor zaya_router_scratch(ZayaRouterParams& params, const at::Tensor& x) {
  // The backend's scratch, from the caching allocator: stream-ordered, so it is reused only after these
  // kernels, and two launches in flight never share it. CUDA split variant: fp32 partial sums, 4 KB per
  // token; gfx942 split plan: partial slots, then the arrival counters its launch clears.
  at::Tensor scratch;
  if (const int64_t bytes = zaya_router_workspace_bytes(params); bytes > 0) {
    scratch = at::empty({bytes / static_cast<int64_t>(sizeof(float))}, x.options().dtype(at::kFloat));
    params.partials = scratch.data_ptr<float>();
  }
  return scratch;
}

namespace {

void zaya_router_out(const at::Tensor& x,                     // [T, H] bf16
                     const std::optional<at::Tensor>& r_prev,  // [T, R] bf16
                     const at::Tensor& down_w,                // [R, H] bf16
                     const at::Tensor& down_b,                // [R] bf16
                     const std::optional<at::Tensor>& eda_scale,  // [R] bf16
                     const at::Tensor& norm_w,                // [R] bf16
                     const at::Tensor& fc1_w,                 // [R, R] bf16
                     const at::Tensor& fc1_b,                 // [R] bf16
                     const at::Tensor& fc2_w,                 // [R, R] bf16
                     const at::Tensor& fc2_b,                 // [R] bf16
                     const at::Tensor& out_w,                 // [E', R] bf16
                     const at::Tensor& balancing_bias,        // [E'] fp32
                     double eps,
                     at::Tensor& weights,                     // [T, 1] fp32
                     at::Tensor& ids,                         // [T, 1] int32
                     at::Tensor& r_out) {                     // [T, R] bf16
  ZayaRouterParams params = zaya_router_params(kOp, x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w,
                                               fc2_b, out_w, balancing_bias, eps, weights, ids, r_out);
  if (params.num_tokens == 0) return;
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor scratch = zaya_router_scratch(params, x);
  check_launch(kOp, launch_zaya_router(params, c10::cuda::getCurrentCUDAStream().stream()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> zaya_router(
    const at::Tensor& x, const std::optional<at::Tensor>& r_prev, const at::Tensor& down_w, const at::Tensor& down_b,
    const std::optional<at::Tensor>& eda_scale, const at::Tensor& norm_w, const at::Tensor& fc1_w,
    const at::Tensor& fc1_b, const at::Tensor& fc2_w, const at::Tensor& fc2_b, const at::Tensor& out_w,
    const at::Tensor& balancing_bias, double eps) {
  const int64_t num_tokens = x.dim() > 0 ? x.size(0) : 0;
  const int64_t width = down_w.dim() > 0 ? down_w.size(0) : 0;  // a bad shape is reported by the out form
  at::Tensor weights = at::empty({num_tokens, 1}, x.options().dtype(at::kFloat));
  at::Tensor ids = at::empty({num_tokens, 1}, x.options().dtype(at::kInt));
  at::Tensor r_out = at::empty({num_tokens, width}, x.options().dtype(at::kBFloat16));
  zaya_router_out(x, r_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias, eps,
                  weights, ids, r_out);
  return {weights, ids, r_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(zaya, CUDA, m) {
  m.impl("zaya_router", &zaya_router);
  m.impl("zaya_router.out", &zaya_router_out);
}

}  // namespace zk
