"""The Masked Autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2021).

Data flow (DESIGN.md), one path, top to bottom: ``forward`` = ``encoder`` -> ``decoder`` -> ``loss``.
    encoder: imgs (B, C, H, W) -> patchify (B, L, P) -> random_masking (B, K, P) -> patch_embed + pos_embed (B, K, D)
             -> [cls] (B, 1+K, D) -> blocks -> norm = latent (B, 1+K, D)
             (the embedding is linear per patch, so embedding after masking equals the paper's embed-then-mask)
    decoder: latent -> decoder_embed (B, 1+K, Dd) -> + mask tokens, unshuffle (B, 1+L, Dd) -> + decoder_pos_embed
             -> decoder_blocks -> decoder_norm -> decoder_pred (B, 1+L, P) -> drop cls = pred (B, L, P)
             (training asks for the removed patches only: the last block and the head then run on those rows)
    loss:    MSE(pred, patchify(imgs) [normalised per patch]) averaged over the removed patches only.

Shape legend: B batch, C channels, H/W image size, L patches, K kept patches, D encoder width, Dd decoder width,
P = ph * pw * C pixels per patch. ``mask`` is (B, L), 1 = removed (masked), 0 = kept (visible).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from . import functional as MF
from ._checks import (
    check_bool,
    check_device,
    check_dtype,
    check_fits,
    check_generator,
    check_images,
    check_indices,
    check_mask_ratio,
    check_tensor,
)
from .config import MAEConfig, check_masking
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
        masking: default masking strategy, "random" (the paper's), "block" or "grid" (Table 1f), overridable per call.
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
        masking: str = "random",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        cfg = MAEConfig(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, norm_pix_loss=norm_pix_loss,
            mask_ratio=mask_ratio, masking=masking,
        )
        device, dtype = check_device(device), check_dtype(dtype)
        # Sizes bounded before allocating (an absurd img_size or width would get the process killed); 'meta'
        # allocates no parameter, so the paper's largest presets still build there for free.
        params, host = cfg.memory_bytes((dtype or torch.get_default_dtype()).itemsize)
        on_host = device is None or device.type == "cpu"
        check_fits(host + params * on_host, f"the model {cfg}", None)
        check_fits(0 if on_host else params, f"the model {cfg}", device)
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
        cfg = self.config
        check_images(imgs, cfg.in_chans, cfg.img_size, self.device, self.cls_token.dtype)

    def _resolve_mask_ratio(self, mask_ratio: float | None, *, training: bool = False) -> float:
        """The call's mask ratio (the config's by default); refused if it keeps no patch, or, to train, removes none."""
        ratio = self.config.mask_ratio if mask_ratio is None else check_mask_ratio(mask_ratio)
        L = self.config.num_patches
        K = MF.num_kept(L, ratio)
        if K == 0:
            raise ValueError(f"mask_ratio={ratio} keeps no patch out of {L}: the encoder would see nothing")
        if training and K == L:
            raise ValueError(f"mask_ratio={ratio} removes no patch out of {L}: the loss would be undefined")
        return ratio

    def _masking_noise(
        self,
        B: int,
        mask_ratio: float | None,
        noise: Tensor | None,
        generator: torch.Generator | None,
        masking: str | None,
        mask: Tensor | None,
    ) -> tuple[float, Tensor | None]:
        """Every masking strategy as (ratio, noise) for the one argsort masking: block, grid and user masks become
        noise that ranks their kept patches first (``mask_to_noise``); random masking draws its own."""
        cfg = self.config
        L = cfg.num_patches
        check_generator(generator)
        if mask is not None:
            if noise is not None or masking is not None or mask_ratio is not None:
                raise ValueError("pass mask alone: it already fixes which patches are removed (and so the ratio)")
            if check_tensor(mask, "mask", "(B, L)").device != self.device:
                raise ValueError(f"mask is on {mask.device} but the model is on {self.device}; move it with .to()")
            if (removed := MF.check_mask(mask, B, L)) == L:
                raise ValueError(f"mask removes all {L} patches of every image: it keeps no patch to encode")
            return self._resolve_mask_ratio(MF.mask_ratio_for(L, removed)), MF.mask_to_noise(mask, generator=generator)
        ratio = self._resolve_mask_ratio(mask_ratio)
        strategy = check_masking(cfg.masking if masking is None else masking, ratio, cfg.grid_size)
        if noise is not None or strategy == "random":
            return ratio, noise
        draw = MF.block_mask if strategy == "block" else MF.grid_mask
        chosen = draw(B, cfg.grid_size, ratio, generator=generator, device=self.device)  # (B, L) 1 = removed
        return ratio, MF.mask_to_noise(chosen, generator=generator)

    # ------------------------------------------------------------------ pixels <-> patches

    def patchify(self, imgs: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, L, P), each patch ordered (row, column, channel)."""
        return MF.patchify(imgs, self.config.patch_size)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, L, P) -> (B, C, H, W), the exact inverse of ``patchify``."""
        cfg = self.config
        return MF.unpatchify(x, cfg.patch_size, cfg.grid_size, cfg.in_chans)

    # ------------------------------------------------------------------ encoder

    def encoder(
        self,
        imgs: Tensor,
        mask_ratio: float | None = None,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        masking: str | None = None,
        mask: Tensor | None = None,
    ) -> EncoderOutput:
        """Embed, mask, and encode only the visible patches (Sec. 3: the encoder never sees mask tokens).

        The patch embedding is a linear map of each patch's pixels (a stride-p convolution), so masking the pixel
        patches first and embedding the K visible ones gives the tokens the paper's order (embed, add positions,
        mask) gives, for a quarter of the embedding work.

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
        self._check_images(imgs)
        ratio, noise = self._masking_noise(imgs.shape[0], mask_ratio, noise, generator, masking, mask)
        visible = MF.random_masking(self.patchify(imgs), ratio, noise=noise, generator=generator)  # (B, K, P)
        x = self.patch_embed.embed_patches(visible.x_kept)  # (B, K, D)
        x = x + self.pos_embed[0, 1:][visible.ids_keep]  # (B, K, D) each token's own position
        B = x.shape[0]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)  # (B, 1, D)
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
        cfg = self.config
        L = cfg.num_patches
        check_tensor(latent, "latent", f"(B, 1+K, {cfg.embed_dim})")
        if latent.ndim != 3 or latent.shape[-1] != cfg.embed_dim or latent.shape[1] < 1:
            raise ValueError(f"latent must be (B, 1+K, {cfg.embed_dim}), got shape {tuple(latent.shape)}")
        B, N, _ = latent.shape
        check_tensor(ids_restore, "ids_restore", f"(B, L) = ({B}, {L})")
        if tuple(ids_restore.shape) != (B, L) or N - 1 > L:
            raise ValueError(
                f"ids_restore must be (B, L) = ({B}, {L}) with at most L kept tokens in latent, "
                f"got ids_restore {tuple(ids_restore.shape)} and latent {tuple(latent.shape)}"
            )
        check_indices(ids_restore, "ids_restore", L, latent.device)
        if patches is not None:
            if check_tensor(patches, "patches", "(B, M)", ndim=2).shape[0] != B or patches.shape[1] > L:
                raise ValueError(f"patches must be (B, M) with B = {B} and M <= {L}, got {tuple(patches.shape)}")
            check_indices(patches, "patches", L, latent.device)
        x = self.decoder_embed(latent)  # (B, 1+K, Dd)
        tokens = MF.restore_sequence(x[:, 1:], self.mask_token, ids_restore)  # (B, L, Dd) mask tokens added
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
        check_tensor(pred, "pred", "(B, L, P)")
        target = self.patchify(imgs)  # (B, L, P)
        if check_tensor(mask, "mask", "(B, L)").shape != target.shape[:2]:
            raise ValueError(f"mask must have shape {tuple(target.shape[:2])} (B, L), got {tuple(mask.shape)}")
        if patches is not None:
            check_indices(check_tensor(patches, "patches", "(B, M)", ndim=2), "patches", target.shape[1], self.device)
            target, mask = MF.gather_tokens(target, patches), mask.gather(1, patches)  # (B, M, P), (B, M)
        if pred.shape != target.shape:
            raise ValueError(f"pred must have shape {tuple(target.shape)} (B, L, P), got {tuple(pred.shape)}")
        return MF.masked_mse_loss(pred, target, mask, self.config.norm_pix_loss)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        imgs: Tensor,
        mask_ratio: float | None = None,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        masking: str | None = None,
        mask: Tensor | None = None,
        loss_only: bool = False,
    ) -> MAEOutput:
        """Encode the visible patches, reconstruct the removed ones, and score them: encoder -> decoder -> loss.

        Args:
            imgs, mask_ratio, noise, generator, masking, mask: as for ``encoder``.
            loss_only: compute only what the loss reads: the decoder's last block and head run on the removed
                patches alone, and ``pred`` comes back as None. Same loss, mask and gradients. The training loop
                uses it (also through DistributedDataParallel: ``model(imgs, loss_only=True).loss``).

        Returns:
            ``MAEOutput(loss, pred (B, L, P), mask (B, L))``; unpacks as ``loss, pred, mask = model(imgs)``.
        """
        loss_only = check_bool(loss_only, "loss_only")
        if mask is None:  # (a mask of your own is checked by the loss: it must remove at least one patch)
            mask_ratio = self._resolve_mask_ratio(mask_ratio, training=True)
        latent, mask, ids_restore = self.encoder(
            imgs, mask_ratio, noise=noise, generator=generator, masking=masking, mask=mask
        )
        removed = MF.shuffle_order(ids_restore)[:, latent.shape[1] - 1 :] if loss_only else None  # (B, L - K)
        pred = self.decoder(latent, ids_restore, patches=removed)
        loss = self.loss(imgs, pred, mask, patches=removed)
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
