"""The Masked Autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2021).

Data flow (see DESIGN.md):
    imgs (B, C, H, W) -> patch_embed (B, L, D) -> + pos_embed -> random_masking (B, K, D) -> [cls] (B, 1+K, D)
    -> blocks -> norm = latent (B, 1+K, D)
    latent -> decoder_embed (B, 1+K, Dd) -> + mask tokens, unshuffle (B, 1+L, Dd) -> + decoder_pos_embed
    -> decoder_blocks -> decoder_norm -> decoder_pred (B, 1+L, P) -> drop cls = pred (B, L, P)
    loss = MSE(pred, patchify(imgs) [normalised per patch]) averaged over the removed patches only.

Shape legend: B batch, C channels, H/W image size, L patches, K kept patches, D encoder width, Dd decoder width,
P = ph * pw * C pixels per patch. ``mask`` is (B, L), 1 = removed (masked), 0 = kept (visible).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from . import functional as MF
from ._checks import check_mask_ratio
from .config import MAEConfig
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

    Keyword arguments are the official ones; the model is built (every parameter and buffer) on ``device`` with
    ``dtype``. State-dict keys and shapes equal the release checkpoints', so ``load_state_dict(ckpt['model'])`` works.

    Args:
        img_size: H or (H, W).
        patch_size: p or (ph, pw).
        in_chans: image channels, any number.
        embed_dim, depth, num_heads: encoder width, blocks, heads.
        decoder_embed_dim, decoder_depth, decoder_num_heads: decoder width, blocks, heads.
        mlp_ratio: MLP hidden width over block width.
        norm_pix_loss: reconstruct per-patch normalised pixels (paper: better features).
        mask_ratio: default fraction of patches removed, overridable per call.
        device, dtype: where and in which floating type the parameters are created.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        mask_ratio: float = 0.75,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        cfg = MAEConfig(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, norm_pix_loss=norm_pix_loss,
            mask_ratio=mask_ratio,
        )
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype}")
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
        self.pos_embed.copy_(MF.sincos_pos_embed_2d(cfg.embed_dim, cfg.grid_size).unsqueeze(0))
        self.decoder_pos_embed.copy_(MF.sincos_pos_embed_2d(cfg.decoder_embed_dim, cfg.grid_size).unsqueeze(0))
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

    # ------------------------------------------------------------------ input checks (public boundary)

    @property
    def device(self) -> torch.device:
        return self.cls_token.device

    def _check_images(self, imgs: Any) -> None:
        if not isinstance(imgs, Tensor):
            raise TypeError(f"imgs must be a torch.Tensor of shape (B, C, H, W), got {type(imgs).__name__}")
        if not imgs.is_floating_point():
            raise TypeError(
                f"imgs must be a floating-point tensor, got dtype {imgs.dtype}; "
                "convert integer images first, e.g. imgs.float() / 255 followed by normalisation"
            )
        cfg = self.config
        if imgs.ndim != 4:
            raise ValueError(
                f"imgs must have 4 dimensions (B, C, H, W), got {imgs.ndim} with shape {tuple(imgs.shape)}"
            )
        B, C, H, W = imgs.shape
        if C != cfg.in_chans:
            raise ValueError(f"imgs has {C} channels but the model expects in_chans={cfg.in_chans}")
        if (H, W) != cfg.img_size:
            raise ValueError(
                f"imgs has size (H, W) = ({H}, {W}) but the model expects img_size={cfg.img_size}; "
                "resize the images or build the model with that img_size"
            )
        if imgs.device != self.device:
            raise ValueError(f"imgs is on {imgs.device} but the model is on {self.device}; move it with .to()")

    def _resolve_mask_ratio(self, mask_ratio: float | None) -> float:
        return self.config.mask_ratio if mask_ratio is None else check_mask_ratio(mask_ratio)

    # ------------------------------------------------------------------ pixels <-> patches

    def patchify(self, imgs: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, L, P), each patch ordered (row, column, channel)."""
        return MF.patchify(imgs, self.config.patch_size)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, L, P) -> (B, C, H, W), the exact inverse of ``patchify``."""
        cfg = self.config
        return MF.unpatchify(x, cfg.patch_size, cfg.grid_size, cfg.in_chans)

    # ------------------------------------------------------------------ encoder

    def _embed(self, imgs: Tensor) -> Tensor:
        """Patch tokens with their positions added BEFORE masking, so every kept token knows where it came from."""
        return self.patch_embed(imgs) + self.pos_embed[:, 1:]  # (B, L, D)

    def _embed_kept(self, imgs: Tensor, ids_keep: Tensor) -> Tensor:
        """``_embed(imgs)`` gathered at ``ids_keep`` (B, K), computed for the K kept patches only.

        The patch projection is linear per patch, so cutting the pixels first and projecting only the visible
        ones gives the same tokens for a quarter of the embedding work (forward and backward).
        """
        pixels = self.patchify(imgs)  # (B, L, P)
        kept = MF.gather_tokens(pixels, ids_keep)  # (B, K, P)
        return self.patch_embed.embed_patches(kept) + self.pos_embed[0, 1:][ids_keep]  # (B, K, D)

    def _mask_and_encode(
        self, imgs: Tensor, mask_ratio: float, noise: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Draw the masking, embed and encode the visible patches: the encoder, plus ``ids_shuffle`` (B, L)."""
        B, L = imgs.shape[0], self.config.num_patches
        ids_shuffle, ids_restore, mask = MF.masking_indices(
            B, L, mask_ratio, noise=noise, generator=generator, device=imgs.device
        )
        x = self._embed_kept(imgs, ids_shuffle[:, : MF.num_kept(L, mask_ratio)])  # (B, K, D)
        # The mask takes the token dtype, as random_masking gives it (float32 under autocast, like the tokens).
        return self._encode(x), mask.to(x.dtype), ids_restore, ids_shuffle  # latent (B, 1+K, D)

    def _encode(self, x: Tensor) -> Tensor:
        """Prepend the cls token and run the transformer: (B, N, D) -> (B, 1+N, D)."""
        B = x.shape[0]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1+N, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def encoder(
        self,
        imgs: Tensor,
        mask_ratio: float | None = None,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> EncoderOutput:
        """Embed, mask, and encode only the visible patches (Sec. 3: the encoder never sees mask tokens).

        Args:
            imgs: (B, C, H, W) floating-point images, normalised as in training.
            mask_ratio: fraction removed; defaults to ``config.mask_ratio``. 0 keeps every patch in order.
            noise: optional (B, L) noise fixing the masking (small = keep), for exact reproduction.
            generator: optional ``torch.Generator`` to draw the masking noise from.

        Returns:
            ``EncoderOutput(latent (B, 1+K, D), mask (B, L), ids_restore (B, L))``.
        """
        self._check_images(imgs)
        ratio = self._resolve_mask_ratio(mask_ratio)
        latent, mask, ids_restore, _ = self._mask_and_encode(imgs, ratio, noise, generator)
        return EncoderOutput(latent, mask, ids_restore)  # latent (B, 1+K, D)

    def forward_features(self, imgs: Tensor) -> Tensor:
        """All tokens, no masking, for downstream use: (B, C, H, W) -> (B, 1+L, D) after the final norm."""
        self._check_images(imgs)
        return self._encode(self._embed(imgs))

    # ------------------------------------------------------------------ decoder

    def decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Reconstruct every patch from the encoded visible ones.

        Args:
            latent: (B, 1+K, D) from ``encoder``.
            ids_restore: (B, L) from ``encoder``.

        Returns:
            pred (B, L, P): predicted pixels of every patch, original order.
        """
        cfg = self.config
        if latent.ndim != 3 or latent.shape[-1] != cfg.embed_dim:
            raise ValueError(f"latent must be (B, 1+K, {cfg.embed_dim}), got shape {tuple(latent.shape)}")
        B, N, _ = latent.shape
        if tuple(ids_restore.shape) != (B, cfg.num_patches) or N - 1 > cfg.num_patches:
            raise ValueError(
                f"ids_restore must be (B, L) = ({B}, {cfg.num_patches}) with at most L kept tokens in latent, "
                f"got ids_restore {tuple(ids_restore.shape)} and latent {tuple(latent.shape)}"
            )
        x = self._decoder_tokens(latent, ids_restore)  # (B, 1+L, Dd)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))  # (B, 1+L, P)
        return x[:, 1:]  # (B, L, P): drop the cls row

    def _decoder_tokens(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Decoder input: embedded latent + mask tokens, unshuffled to patch order, cls first, positions added."""
        x = self.decoder_embed(latent)  # (B, 1+K, Dd)
        patches = MF.restore_sequence(x[:, 1:], self.mask_token, ids_restore)  # (B, L, Dd)
        return torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed  # (B, 1+L, Dd)

    # ------------------------------------------------------------------ loss

    def loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """MSE between predicted and true pixels, over the removed patches only.

        Args:
            imgs: (B, C, H, W) the input images.
            pred: (B, L, P) from ``decoder``.
            mask: (B, L), 1 = removed; visible patches contribute nothing (and get zero gradient).

        Returns:
            Scalar loss. With ``norm_pix_loss`` the target patches are normalised by their own mean and std.
        """
        target = self.patchify(imgs)  # (B, L, P)
        if pred.shape != target.shape:
            raise ValueError(f"pred must have shape {tuple(target.shape)} (B, L, P), got {tuple(pred.shape)}")
        if mask.shape != target.shape[:2]:
            raise ValueError(f"mask must have shape {tuple(target.shape[:2])} (B, L), got {tuple(mask.shape)}")
        return MF.masked_mse_loss(pred, target, mask, self.config.norm_pix_loss)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        imgs: Tensor,
        mask_ratio: float | None = None,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        loss_only: bool = False,
    ) -> MAEOutput:
        """Encode the visible patches, reconstruct all, and score the removed ones.

        Args:
            loss_only: opt-in training fast path: compute only what the loss needs (see ``training_loss``) and
                return ``pred=None``. Same loss, mask and gradients. Use it where the model must be called
                through ``forward`` (e.g. wrapped in DistributedDataParallel): ``model(imgs, loss_only=True).loss``.

        Returns:
            ``MAEOutput(loss, pred (B, L, P), mask (B, L))``; unpacks as ``loss, pred, mask = model(imgs)``.
        """
        if loss_only:
            loss, mask = self._loss_on_removed(imgs, mask_ratio, noise, generator)
            return MAEOutput(loss, None, mask)
        ratio = self._training_mask_ratio(mask_ratio)
        latent, mask, ids_restore = self.encoder(imgs, ratio, noise=noise, generator=generator)
        pred = self.decoder(latent, ids_restore)
        return MAEOutput(self.loss(imgs, pred, mask), pred, mask)

    def training_loss(
        self,
        imgs: Tensor,
        mask_ratio: float | None = None,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``forward(imgs, ...).loss`` computed with only the work the loss needs: the fast training entry point.

        Same arguments, same masking for the same noise or generator, same loss value and gradients (up to float
        rounding) as ``forward``. It saves work that forward must do to return ``pred`` for every patch: the last
        decoder block's queries, MLP, ``decoder_norm`` and ``decoder_pred`` run on the removed patches only (Sec. 3:
        the loss is computed on removed patches only), and no (B, L, P) prediction is materialised. Use it in
        training loops: ``loss = model.training_loss(imgs); loss.backward()``; through a wrapper that only calls
        ``forward`` (DistributedDataParallel), use ``model(imgs, loss_only=True).loss``, the same computation.

        Returns:
            Scalar loss: per-patch MSE averaged over the removed patches.
        """
        return self._loss_on_removed(imgs, mask_ratio, noise, generator)[0]

    def _loss_on_removed(
        self, imgs: Tensor, mask_ratio: float | None, noise: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """The loss, decoding the last block and the prediction head on removed patches only; plus the mask."""
        ratio = self._training_mask_ratio(mask_ratio)
        self._check_images(imgs)
        latent, mask, ids_restore, ids_shuffle = self._mask_and_encode(imgs, ratio, noise, generator)
        L = ids_shuffle.shape[1]
        removed = ids_shuffle[:, MF.num_kept(L, ratio) :]  # (B, M) the removed patches, M = L - K
        x = self._decoder_tokens(latent, ids_restore)  # (B, 1+L, Dd)
        for block in self.decoder_blocks[:-1]:
            x = block(x)
        x = self.decoder_blocks[-1].forward_rows(x, removed + 1)  # (B, M, Dd); +1 skips the cls row
        pred = self.decoder_pred(self.decoder_norm(x))  # (B, M, P)
        pixels = self.patchify(imgs)  # (B, L, P)
        target = MF.gather_tokens(pixels, removed)  # (B, M, P)
        loss = MF.per_patch_mse(pred, target, self.config.norm_pix_loss).mean()  # every row is a removed patch
        return loss, mask

    def _training_mask_ratio(self, mask_ratio: float | None) -> float:
        ratio = self._resolve_mask_ratio(mask_ratio)
        if MF.num_kept(self.config.num_patches, ratio) == self.config.num_patches:
            raise ValueError(
                f"mask_ratio={ratio} removes no patch out of {self.config.num_patches}: the loss would be undefined"
            )
        return ratio

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"img_size={cfg.img_size}, patch_size={cfg.patch_size}, in_chans={cfg.in_chans}, "
            f"mask_ratio={cfg.mask_ratio}, norm_pix_loss={cfg.norm_pix_loss}"
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
