# SPDX-License-Identifier: Apache-2.0
"""Glue between the zaya ops and inference engines. Each submodule is imported on demand and needs its
engine installed: `zaya_kernels.integrations.transformers` (Hugging Face transformers >= 5.23, the
optional extra `pip install zaya_kernels[transformers]`). vLLM and SGLang: docs/engines.md."""
