"""Loading and saving, one concern per module.

* ``safe_read``: safe reading of weight files (format from the bytes; pickles only with ``weights_only=True``);
* ``atomic``: the one atomic writer every file and folder of the project goes through;
* ``formats``: which weights a source holds (our folders, official files, Hugging Face, state dicts);
* ``infer``: the config a state dict describes; ``pos_embed``: position tables for another image size;
* ``load``: load policy and ``LoadReport``; ``save``: ``save_pretrained``;
* ``hf``: Hugging Face ViTMAE keys and configs; ``timm`` (import it explicitly): export to timm's ViT.

    >>> import mae
    >>> model = mae.from_pretrained("mae_visualize_vit_large.pth")   # or a folder, a Hugging Face ViTMAE folder, ...
    >>> mae.save_pretrained(model, "my_mae")                          # config.json + model.safetensors
"""

from .atomic import atomic_write
from .formats import Checkpoint, read_checkpoint
from .hf import config_from_hf, config_to_hf, hf_to_mae_state_dict, mae_to_hf_state_dict, save_hf
from .infer import infer_config
from .load import LoadReport, from_pretrained, load_checkpoint, load_pretrained
from .pos_embed import adapt_pos_embed, resize_pos_embed
from .safe_read import UnsafeCheckpointError
from .save import save_pretrained

__all__ = [
    "Checkpoint",
    "LoadReport",
    "UnsafeCheckpointError",
    "adapt_pos_embed",
    "atomic_write",
    "config_from_hf",
    "config_to_hf",
    "from_pretrained",
    "hf_to_mae_state_dict",
    "infer_config",
    "load_checkpoint",
    "load_pretrained",
    "mae_to_hf_state_dict",
    "read_checkpoint",
    "resize_pos_embed",
    "save_hf",
    "save_pretrained",
]
