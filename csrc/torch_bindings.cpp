// SPDX-License-Identifier: Apache-2.0
// torch_bindings.cpp: the whole op contract of zaya_kernels, one schema per op and its .out form.
// Device kernels register in csrc/ops/*.cpp (TORCH_LIBRARY_IMPL(zaya, CUDA, m)); fake and CPU
// (reference) kernels register from zaya_kernels/ops.py. Shapes and semantics: DESIGN.md §2 and
// the docstrings in zaya_kernels/ops.py.
#include <Python.h>
#include <torch/library.h>

// The built .so is imported as a Python module only to run the static registrars below.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(zaya, m) {
  m.set_python_module("zaya_kernels.ops");

  // Softmax over E' logits, top-k of (p + bias) with the lower index first on ties; returns the
  // unbiased p of the chosen ids (fp32) and the ids (int32). skip_index marks the MOD route.
  m.def("topk_gating(Tensor logits, Tensor? bias=None, int k=1, bool renormalize=False, int skip_index=-1)"
        " -> (Tensor weights, Tensor ids)");
  m.def("topk_gating.out(Tensor logits, Tensor? bias=None, int k=1, bool renormalize=False, int skip_index=-1, *,"
        " Tensor(a!) weights, Tensor(b!) ids) -> ()");

  // The whole ZAYA1 router: down-projection, EDA, RMSNorm, 3-layer GELU MLP, fp32 softmax over
  // experts + skip, balancing biases, top-1. Returns (weights [T,1] fp32, ids [T,1] int32,
  // r_out [T,R] bf16 = the EDA state for the next MoE layer).
  m.def("zaya_router(Tensor x, Tensor? r_prev, Tensor down_w, Tensor down_b, Tensor? eda_scale, Tensor norm_w,"
        " Tensor fc1_w, Tensor fc1_b, Tensor fc2_w, Tensor fc2_b, Tensor out_w, Tensor balancing_bias,"
        " float eps=1e-05) -> (Tensor weights, Tensor ids, Tensor r_out)");
  m.def("zaya_router.out(Tensor x, Tensor? r_prev, Tensor down_w, Tensor down_b, Tensor? eda_scale, Tensor norm_w,"
        " Tensor fc1_w, Tensor fc1_b, Tensor fc2_w, Tensor fc2_b, Tensor out_w, Tensor balancing_bias,"
        " float eps=1e-05, *, Tensor(a!) weights, Tensor(b!) ids, Tensor(c!) r_out)"
        " -> ()");

  // Counting sort of the T*k (token, slot) pairs by expert, each expert's segment padded to
  // block_m, buffers sized by the static bound T*k + E*(block_m-1); ids outside [0, E) (the skip
  // route) go to no expert.
  m.def("moe_align(Tensor ids, int num_experts, int block_m)"
        " -> (Tensor sorted_token_ids, Tensor block_expert_ids, Tensor expert_offsets, Tensor num_padded)");
  m.def("moe_align.out(Tensor ids, int num_experts, int block_m, *, Tensor(a!) sorted_token_ids,"
        " Tensor(b!) block_expert_ids, Tensor(c!) expert_offsets, Tensor(d!) num_padded)"
        " -> ()");

  // zaya_router, then moe_align of its ids over the E' - 1 experts (the skip route E' - 1 goes to no
  // expert), as one op: the router's outputs, then moe_align's. workspace: kRouteWorkspaceBytes
  // uint8 (zaya_kernels.route_workspace), zero between calls; the kernels leave it zero.
  m.def("zaya_route(Tensor x, Tensor? r_prev, Tensor down_w, Tensor down_b, Tensor? eda_scale, Tensor norm_w,"
        " Tensor fc1_w, Tensor fc1_b, Tensor fc2_w, Tensor fc2_b, Tensor out_w, Tensor balancing_bias,"
        " Tensor(a!) workspace, int block_m, float eps=1e-05) -> (Tensor weights, Tensor ids, Tensor r_out,"
        " Tensor sorted_token_ids, Tensor block_expert_ids, Tensor expert_offsets, Tensor num_padded)");
  m.def("zaya_route.out(Tensor x, Tensor? r_prev, Tensor down_w, Tensor down_b, Tensor? eda_scale, Tensor norm_w,"
        " Tensor fc1_w, Tensor fc1_b, Tensor fc2_w, Tensor fc2_b, Tensor out_w, Tensor balancing_bias,"
        " Tensor(a!) workspace, int block_m, float eps=1e-05, *, Tensor(b!) weights, Tensor(c!) ids,"
        " Tensor(d!) r_out, Tensor(e!) sorted_token_ids, Tensor(f!) block_expert_ids, Tensor(g!) expert_offsets,"
        " Tensor(h!) num_padded) -> ()");

  // c[rows of expert e] = a[rows of expert e] @ w[e]^T, segments [offsets[e], offsets[e+1]);
  // rows outside every segment are zero.
  m.def("grouped_gemm(Tensor a, Tensor w, Tensor expert_offsets) -> Tensor");
  m.def("grouped_gemm.out(Tensor a, Tensor w, Tensor expert_offsets, *, Tensor(a!) out) -> ()");

  // The fused expert path: gather, fc1 + SwiGLU, fc2 + combine weight, scatter to token order,
  // plus the skip route ("scaled_input": p_skip * x, or "zero").
  m.def("moe_mlp(Tensor x, Tensor topk_weights, Tensor topk_ids, Tensor sorted_token_ids, Tensor expert_offsets,"
        " Tensor w_fc1, Tensor w_fc2, str skip_mode=\"scaled_input\") -> Tensor");
  m.def("moe_mlp.out(Tensor x, Tensor topk_weights, Tensor topk_ids, Tensor sorted_token_ids,"
        " Tensor expert_offsets, Tensor w_fc1, Tensor w_fc2, str skip_mode=\"scaled_input\", *,"
        " Tensor(a!) out) -> ()");

  // CCA pre-attention from the packed projection [T, q|k|v1|v2]: both causal convs, mean skip,
  // L2 norm, key temperature, partial RoPE, delayed value; writes K/V into the paged cache and
  // updates conv_state / value_state per sequence; returns q [T, Hq, D] bf16.
  m.def("cca_prep(Tensor proj, Tensor cu_seqlens, Tensor seq_start, Tensor(a!) conv_state,"
        " Tensor(b!) value_state, Tensor conv1_w, Tensor conv1_b, Tensor conv2_w, Tensor conv2_b, Tensor temp,"
        " Tensor(c!) k_cache, Tensor(d!) v_cache, Tensor block_table, float rope_theta=5000000.0,"
        " int rotary_dim=64) -> Tensor q");
  m.def("cca_prep.out(Tensor proj, Tensor cu_seqlens, Tensor seq_start, Tensor(a!) conv_state,"
        " Tensor(b!) value_state, Tensor conv1_w, Tensor conv1_b, Tensor conv2_w, Tensor conv2_b, Tensor temp,"
        " Tensor(c!) k_cache, Tensor(d!) v_cache, Tensor block_table, float rope_theta=5000000.0,"
        " int rotary_dim=64, *, Tensor(e!) q) -> ()");

  // Causal GQA attention of packed varlen queries against the paged KV cache (the queries are
  // the last tokens of each sequence's keys).
  m.def("attention_prefill(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor cu_seqlens_q,"
        " Tensor seq_lens_k, float? softmax_scale=None, bool causal=True) -> Tensor");
  m.def("attention_prefill.out(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor cu_seqlens_q,"
        " Tensor seq_lens_k, float? softmax_scale=None, bool causal=True, *, Tensor(a!) out) -> ()");

  // One query token per sequence against the paged KV cache (split-KV on the GPU).
  m.def("attention_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor seq_lens,"
        " float? softmax_scale=None) -> Tensor");
  m.def("attention_decode.out(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor seq_lens,"
        " float? softmax_scale=None, *, Tensor(a!) out) -> ()");
}
