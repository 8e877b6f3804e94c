"""Bridges to other libraries' layouts: Hugging Face ViTMAE (``mae.interop.hf``) and timm (``mae.interop.timm``).

The Hugging Face conversions work on plain state dicts and JSON configs: neither ``transformers`` nor a network
connection is needed. ``mae.interop.timm`` imports timm (a runtime dependency) when it is imported itself.
"""

from .hf import config_from_hf, config_to_hf, hf_to_mae_state_dict, is_hf_state_dict, mae_to_hf_state_dict, save_hf

__all__ = [
    "config_from_hf",
    "config_to_hf",
    "hf_to_mae_state_dict",
    "is_hf_state_dict",
    "mae_to_hf_state_dict",
    "save_hf",
]
