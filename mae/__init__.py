"""mae-pytorch: the Masked Autoencoder of He et al. (2021), faithful to the paper and readable in one sitting.

    >>> import torch, mae
    >>> model = mae.create_model("mae_vit_base_patch16", norm_pix_loss=True)
    >>> imgs = torch.randn(2, 3, 224, 224)      # normalised images (B, C, H, W)
    >>> loss, pred, mask = model(imgs)
    >>> mae.save_pretrained(model, "my_mae")    # and back: mae.from_pretrained("my_mae")
"""

from .config import IMAGENET_MEAN, IMAGENET_STD, MAEConfig, list_models
from .functional import masked_mse_loss, patchify, random_masking, sincos_pos_embed_2d, unpatchify
from .io import from_pretrained, save_pretrained
from .layers import Attention, Block, Mlp, PatchEmbedding
from .model import EncoderOutput, MAEOutput, MaskedAutoEncoder, create_model

__version__ = "0.1.0"

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Attention",
    "Block",
    "EncoderOutput",
    "MAEConfig",
    "MAEOutput",
    "MaskedAutoEncoder",
    "Mlp",
    "PatchEmbedding",
    "create_model",
    "from_pretrained",
    "list_models",
    "masked_mse_loss",
    "patchify",
    "random_masking",
    "save_pretrained",
    "sincos_pos_embed_2d",
    "unpatchify",
    "__version__",
]
