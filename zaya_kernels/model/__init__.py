# SPDX-License-Identifier: Apache-2.0
"""The minimal ZAYA1 model (DESIGN.md §3): config, layers, decode state, checkpoint loading."""
from .config import ZayaConfig, from_hf_config, hf_config_layout, tiny, to_hf_config, zaya1_8b
from .loader import export_tensors, load_model, load_weights_, save_native
from .model import ZayaModel, init_random_, random_model
from .state import DecodeState, pack_sequences

__all__ = ["ZayaConfig", "zaya1_8b", "tiny", "from_hf_config", "to_hf_config", "hf_config_layout", "ZayaModel",
           "init_random_", "random_model", "DecodeState", "pack_sequences", "load_model", "load_weights_",
           "save_native", "export_tensors"]
