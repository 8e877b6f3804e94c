"""The Masked Autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2021).

Data flow (docs/architecture.md), one path, top to bottom: ``forward`` = ``encoder`` -> ``decoder`` -> ``loss``.
    encoder: imgs (B, C, H, W) -> patchify (B, L, P) -> random_masking (B, K, P) -> patch_embed + pos_embed (B, K, D)
             -> [cls] (B, 1+K, D) -> blocks -> norm = latent (B, 1+K, D)
             (masking before embedding: see ``PatchEmbedding.embed_patches``)
    decoder: latent -> decoder_embed (B, 1+K, Dd) -> + mask tokens, unshuffle (B, 1+L, Dd) -> + decoder_pos_embed
             -> decoder_blocks -> decoder_norm -> decoder_pred (B, 1+L, P) -> drop cls = pred (B, L, P)
             (training asks for the removed patches only: the last block and the head then run on those rows)
    loss:    MSE(pred, patchify(imgs) [normalised per patch]) averaged over the removed patches only.

What a user passes in is checked once, where it enters: each public method checks its arguments, then runs the
private stage of the same name (``_encode``, ``_decode``, ``_loss``), which trusts them; ``forward`` checks once and
runs the three private stages.

Shape legend: B batch, C channels, H/W image size, L patches, K kept patches, D encoder width, Dd decoder width,
P = ph * pw * C pixels per patch. ``mask`` is (B, L), 1 = removed (masked), 0 = kept (visible).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from . import _checks
from .config import MASKINGS, MAEConfig
from .functional import (
    _block_mask,
    _grid_mask,
    _mask_to_noise,
    _masked_mse_loss,
    _num_kept,
    _patchify,
    _random_masking,
    _sincos_pos_embed_2d,
    gather_tokens,
    mask_ratio_for,
    patchify,
    restore_sequence,
    shuffle_order,
    unpatchify,
)
from .layers import Block, LayerNorm, PatchEmbedding

__all__ = ["MaskedAutoEncoder", "EncoderOutput", "MAEOutput", "create_model"]


class EncoderOutput(NamedTuple):
    latent: Tensor  # (B, 1+K, D) cls token first, then the visible patches in shuffled order
    mask: Tensor  # (B, L) 1 = removed
    ids_restore: Tensor  # (B, L)


class MAEOutput(NamedTuple):
    """Unpacks like the release code's ``loss, pred, mask = model(imgs)``."""

    loss: Tensor  # scalar
    pred: Tensor | None  # (B, L, P) predicted pixels for every patch (normalised per patch when norm_pix_loss);
    # None only from forward(..., loss_only=True)
    mask: Tensor  # (B, L) 1 = removed


class MaskedAutoEncoder(nn.Module):
    """ViT encoder on the visible patches + light decoder that reconstructs the pixels of the removed ones.

    Keyword arguments are the official ones, the fields of ``MAEConfig`` (documented there; ``mask_ratio`` and
    ``masking`` are defaults that each call may override). The model is built (every parameter and buffer) on
    ``device`` with ``dtype``. State-dict keys and shapes equal the release checkpoints', so
    ``load_state_dict(ckpt['model'])`` works.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 16, in_chans: int = 3,
                 embed_dim: int = 1024, depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = False, mask_ratio: float = 0.75, masking: str = "random", *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        cfg = MAEConfig(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, norm_pix_loss=norm_pix_loss,
            mask_ratio=mask_ratio, masking=masking,
        )
        device, dtype = _checks.check_device(device), _checks.check_dtype(dtype)
        # One bound for the whole model before allocating (an absurd img_size or width would get the process
        # killed); 'meta' allocates no parameter, so the paper's largest presets still build there for free.
        device_bytes, host_bytes = cfg.memory_bytes((dtype or torch.get_default_dtype()).itemsize)
        _checks.check_model_fits(device_bytes, host_bytes, f"the model {cfg}", device)
        self.config = cfg
        factory = {"device": device, "dtype": dtype}
        L, D, Dd = cfg.num_patches, cfg.embed_dim, cfg.decoder_embed_dim

        # Encoder. The position tables are fixed sin-cos (never trained) but kept as parameters with
        # requires_grad=False so the state dict and the parameter count match the release checkpoints.
        self.patch_embed = PatchEmbedding(cfg.img_size, cfg.patch_size, cfg.in_chans, D, **factory)
        self.cls_token = nn.Parameter(torch.empty(1, 1, D, **factory))
        self.pos_embed = nn.Parameter(torch.empty(1, 1 + L, D, **factory), requires_grad=False)
        self.blocks = nn.ModuleList([Block(D, cfg.num_heads, cfg.mlp_ratio, **factory) for _ in range(cfg.depth)])
        self.norm = LayerNorm(D, **factory)

        # Decoder (Sec. 3: narrower and shallower than the encoder; only used during pretraining).
        self.decoder_embed = nn.Linear(D, Dd, **factory)
        self.mask_token = nn.Parameter(torch.empty(1, 1, Dd, **factory))
        self.decoder_pos_embed = nn.Parameter(torch.empty(1, 1 + L, Dd, **factory), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(Dd, cfg.decoder_num_heads, cfg.mlp_ratio, **factory) for _ in range(cfg.decoder_depth)]
        )
        self.decoder_norm = LayerNorm(Dd, **factory)
        self.decoder_pred = nn.Linear(Dd, cfg.patch_dim, **factory)

        self.initialize_weights()

    @classmethod
    def from_config(cls, config: MAEConfig, *, device: Any = None, dtype: Any = None) -> MaskedAutoEncoder:
        """Build from an ``MAEConfig`` (see ``mae.create_model`` for named presets)."""
        if not isinstance(config, MAEConfig):
            raise TypeError(f"config must be an MAEConfig, got {type(config).__name__}")
        return cls(**{k: getattr(config, k) for k in config.__dataclass_fields__}, device=device, dtype=dtype)

    # ------------------------------------------------------------------ initialisation

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The release code's initialisation: sin-cos tables, xavier-uniform linears, N(0, 0.02) tokens."""
        cfg = self.config
        self.pos_embed.copy_(_sincos_pos_embed_2d(cfg.embed_dim, cfg.grid_size).unsqueeze(0))
        self.decoder_pos_embed.copy_(_sincos_pos_embed_2d(cfg.decoder_embed_dim, cfg.grid_size).unsqueeze(0))
        # The patch projection is initialised like a Linear on its (D, C*ph*pw) view; its bias keeps torch's default.
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)  # qkv as one (3D, D) matrix, as in the release
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ input checks (the public boundary)

    @property
    def device(self) -> torch.device:
        return self.cls_token.device

    def _check_images(self, imgs: Any) -> None:
        _checks.check_images(imgs, self.config.in_chans, self.config.img_size, self.device, self.cls_token.dtype)

    def _masking_noise(self, imgs: Any, mask_ratio: Any, noise: Any, generator: Any, masking: Any, mask: Any, *,
                       training: bool = False) -> tuple[float, Tensor | None]:
        """``encoder``'s and ``forward``'s arguments, checked once, as (ratio, noise) for the one argsort masking.

        Block, grid and user masks become noise that ranks their kept patches first (``mask_to_noise``); random
        masking draws its own from ``generator``. The ratio must keep a patch to encode and, to train, remove one.
        """
        cfg, L = self.config, self.config.num_patches
        self._check_images(imgs)
        B = imgs.shape[0]
        ratio, removed = _checks.check_masking_args(mask_ratio, noise, generator, masking, mask, shape=(B, L),
                                                    device=self.device, training=training)
        if mask is not None:
            return mask_ratio_for(L, removed), _mask_to_noise(mask, generator)
        ratio = cfg.mask_ratio if ratio is None else ratio
        if (K := _num_kept(L, ratio)) == 0 or (training and K == L):
            raise ValueError(f"mask_ratio={ratio} {'keeps' if K == 0 else 'removes'} no patch out of {L}: the encoder "
                             "needs a visible patch, the loss a removed one")
        strategy = _checks.check_masking(cfg.masking if masking is None else masking, MASKINGS, ratio, cfg.grid_size)
        if noise is not None or strategy == "random":
            return ratio, noise
        if strategy == "block":
            chosen = _block_mask(B, cfg.grid_size, ratio, self.device, generator)  # (B, L) 1 = removed
        else:
            chosen = _grid_mask(B, cfg.grid_size, None, self.device, generator)  # (B, L) 1 = removed
        return ratio, _mask_to_noise(chosen, generator)

    # ------------------------------------------------------------------ pixels <-> patches

    def patchify(self, imgs: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, L, P), each patch ordered (row, column, channel)."""
        return patchify(imgs, self.config.patch_size)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, L, P) -> (B, C, H, W), the exact inverse of ``patchify``."""
        return unpatchify(x, self.config.patch_size, self.config.grid_size, self.config.in_chans)

    # ------------------------------------------------------------------ encoder

    def encoder(self, imgs: Tensor, mask_ratio: float | None = None, *, noise: Tensor | None = None,
                generator: torch.Generator | None = None, masking: str | None = None, mask: Tensor | None = None
                ) -> EncoderOutput:
        """Mask, embed, and encode only the visible patches (Sec. 3: the encoder never sees mask tokens).

        Args:
            imgs: (B, C, H, W) floating-point images, normalised as in training.
            mask_ratio: fraction removed; defaults to ``config.mask_ratio``. 0 keeps every patch in order.
            noise: optional (B, L) noise fixing the masking (small = keep), for exact reproduction; it decides the
                masking whatever the strategy.
            generator: optional ``torch.Generator`` to draw the masking (noise, blocks, grid offsets) from.
            masking: "random", "block" or "grid" (Table 1f); defaults to ``config.masking``.
            mask: optional (B, L) mask of your own, 1 = removed, the same number removed in every row; it replaces
                ``mask_ratio``, ``noise`` and ``masking``.

        Returns:
            ``EncoderOutput(latent (B, 1+K, D), mask (B, L), ids_restore (B, L))``.
        """
        ratio, noise = self._masking_noise(imgs, mask_ratio, noise, generator, masking, mask)
        return self._encode(imgs, ratio, noise, generator)

    def _encode(self, imgs: Tensor, mask_ratio: float, noise: Tensor | None,
                generator: torch.Generator | None) -> EncoderOutput:
        visible = _random_masking(_patchify(imgs, self.config.patch_size), mask_ratio, noise, generator)  # (B, K, P)
        x = self.patch_embed.embed_patches(visible.x_kept)  # (B, K, D)
        x = x + self.pos_embed[0, 1:][visible.ids_keep]  # (B, K, D) each token's own position
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1+K, D)
        for block in self.blocks:
            x = block(x)
        return EncoderOutput(self.norm(x), visible.mask, visible.ids_restore)  # latent (B, 1+K, D)

    def forward_features(self, imgs: Tensor) -> Tensor:
        """All tokens, no masking, for downstream use: (B, C, H, W) -> (B, 1+L, D) after the final norm.

        The encoder at mask ratio 0 (every patch kept, in the original order). The model's default masking strategy
        plays no part: with nothing removed they all agree, and grid masking would refuse a ratio other than 0.75.
        """
        return self.encoder(imgs, mask_ratio=0.0, masking="random").latent

    # ------------------------------------------------------------------ decoder

    def decoder(self, latent: Tensor, ids_restore: Tensor, *, patches: Tensor | None = None) -> Tensor:
        """Reconstruct the pixels of every patch (or of the ones asked for) from the encoded visible ones.

        Args:
            latent: (B, 1+K, D) from ``encoder``.
            ids_restore: (B, L) from ``encoder``.
            patches: optional (B, M) patch indices (original order) to predict; the last decoder block and the
                prediction head then run on those M rows only. Training asks for the removed patches, the only
                ones the loss reads (``forward(..., loss_only=True)``).

        Returns:
            pred (B, L, P) for every patch in the original order, or (B, M, P) for ``patches``.
        """
        _checks.check_decoder_inputs(latent, ids_restore, patches, self.config.embed_dim, self.config.num_patches)
        return self._decode(latent, ids_restore, patches)

    def _decode(self, latent: Tensor, ids_restore: Tensor, patches: Tensor | None) -> Tensor:
        x = self.decoder_embed(latent)  # (B, 1+K, Dd)
        tokens = restore_sequence(x[:, 1:], self.mask_token, ids_restore)  # (B, L, Dd) mask tokens added
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed  # (B, 1+L, Dd) cls first
        rows = None if patches is None else patches + 1  # (B, M) token rows: +1 skips the cls row
        *blocks, last = self.decoder_blocks
        for block in blocks:
            x = block(x)
        x = last(x, rows)  # (B, 1+L, Dd), or (B, M, Dd) at rows
        x = self.decoder_pred(self.decoder_norm(x))  # (B, 1+L, P) or (B, M, P)
        return x[:, 1:] if patches is None else x  # drop the cls row

    # ------------------------------------------------------------------ loss

    def loss(self, imgs: Tensor, pred: Tensor, mask: Tensor, *, patches: Tensor | None = None) -> Tensor:
        """MSE between predicted and true pixels, over the removed patches only.

        Args:
            imgs: (B, C, H, W) the input images.
            pred: (B, L, P) from ``decoder``, or (B, M, P) when the decoder was asked for ``patches``.
            mask: (B, L), 1 = removed; visible patches contribute nothing (and get zero gradient).
            patches: (B, M) the patch indices ``pred``'s rows belong to, if not all of them.

        Returns:
            Scalar loss. With ``norm_pix_loss`` the target patches are normalised by their own mean and std.
        """
        self._check_images(imgs)
        cfg = self.config
        _checks.check_loss_inputs(pred, mask, patches, (imgs.shape[0], cfg.num_patches, cfg.patch_dim), self.device)
        return self._loss(imgs, pred, mask, patches)

    def _loss(self, imgs: Tensor, pred: Tensor, mask: Tensor, patches: Tensor | None) -> Tensor:
        target = _patchify(imgs, self.config.patch_size)  # (B, L, P)
        if patches is not None:
            target, mask = gather_tokens(target, patches), mask.gather(1, patches)  # (B, M, P), (B, M)
        return _masked_mse_loss(pred, target, mask, self.config.norm_pix_loss)

    # ------------------------------------------------------------------ forward

    def forward(self, imgs: Tensor, mask_ratio: float | None = None, *, noise: Tensor | None = None,
                generator: torch.Generator | None = None, masking: str | None = None, mask: Tensor | None = None,
                loss_only: bool = False) -> MAEOutput:
        """Encode the visible patches, reconstruct the removed ones, and score them: encoder -> decoder -> loss.

        Args:
            imgs, mask_ratio, noise, generator, masking, mask: as for ``encoder``.
            loss_only: compute only what the loss reads: the decoder's last block and head run on the removed
                patches alone, and ``pred`` comes back as None. Same loss, mask and gradients. The training loop
                uses it (also through DistributedDataParallel: ``model(imgs, loss_only=True).loss``).

        Returns:
            ``MAEOutput(loss, pred (B, L, P), mask (B, L))``; unpacks as ``loss, pred, mask = model(imgs)``.
        """
        loss_only = _checks.check_bool(loss_only, "loss_only")
        ratio, noise = self._masking_noise(imgs, mask_ratio, noise, generator, masking, mask, training=True)
        latent, mask, ids_restore = self._encode(imgs, ratio, noise, generator)
        removed = shuffle_order(ids_restore)[:, latent.shape[1] - 1 :] if loss_only else None  # (B, L - K)
        pred = self._decode(latent, ids_restore, removed)
        loss = self._loss(imgs, pred, mask, removed)
        return MAEOutput(loss, None if loss_only else pred, mask)

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"img_size={cfg.img_size}, patch_size={cfg.patch_size}, in_chans={cfg.in_chans}, "
            f"mask_ratio={cfg.mask_ratio}, masking={cfg.masking!r}, norm_pix_loss={cfg.norm_pix_loss}"
        )


def create_model(name: str, *, device: Any = None, dtype: Any = None, **overrides: Any) -> MaskedAutoEncoder:
    """Build a preset, e.g. ``create_model('mae_vit_base_patch16', norm_pix_loss=True, device='cuda')``.

    Args:
        name: one of ``mae.list_models()``.
        device: where every parameter and buffer is created ('cpu', 'cuda', 'meta', ...).
        dtype: floating dtype of the parameters (default: torch's default dtype).
        **overrides: any ``MAEConfig`` field (img_size, in_chans, mask_ratio, ...).
    """
    return MaskedAutoEncoder.from_config(MAEConfig.from_name(name, **overrides), device=device, dtype=dtype)
