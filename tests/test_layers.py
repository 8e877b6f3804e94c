"""Layers: patch embedding order, attention against a manual softmax, and ``Block`` against timm's ViT block."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from timm.models.vision_transformer import Block as TimmBlock
from torch import nn

from mae import Attention, Block, Mlp, PatchEmbedding, patchify


def _randomize(module: nn.Module, seed: int = 0) -> None:
    """Fill every parameter with random values, so zero biases or unit norms cannot hide a wiring mistake."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.2)


def manual_attention(x, qkv_w, qkv_b, proj_w, proj_b, num_heads):
    """Multi-head self-attention written out: softmax(q k^T / sqrt(d)) v per head, heads concatenated."""
    B, N, D = x.shape
    d = D // num_heads
    qkv = x @ qkv_w.T + qkv_b  # (B, N, 3D): [q | k | v], each split into heads of width d
    q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
    heads = []
    for h in range(num_heads):
        qh, kh, vh = (t[..., h * d:(h + 1) * d] for t in (q, k, v))  # (B, N, d)
        weights = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(d), dim=-1)  # (B, N, N)
        heads.append(weights @ vh)
    return torch.cat(heads, dim=-1) @ proj_w.T + proj_b


@pytest.mark.parametrize(("dim", "heads", "N"), [(64, 4, 17), (32, 1, 5), (48, 8, 10)])
def test_attention_equals_manual_softmax_attention(dim, heads, N):
    torch.manual_seed(0)
    attn = Attention(dim, heads, dtype=torch.float64)
    _randomize(attn)
    x = torch.randn(3, N, dim, dtype=torch.float64)
    expected = manual_attention(x, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias, heads)
    torch.testing.assert_close(attn(x), expected, atol=1e-10, rtol=1e-10)


def test_attention_is_permutation_equivariant_and_has_no_positional_bias():
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(2, 9, 32)
    perm = torch.randperm(9)
    torch.testing.assert_close(attn(x)[:, perm], attn(x[:, perm]), atol=1e-5, rtol=1e-5)


def test_mlp_uses_exact_gelu():
    torch.manual_seed(0)
    mlp = Mlp(16, 64, dtype=torch.float64)
    _randomize(mlp)
    x = torch.randn(4, 16, dtype=torch.float64) * 3
    h = x @ mlp.fc1.weight.T + mlp.fc1.bias
    exact = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    torch.testing.assert_close(mlp(x), exact @ mlp.fc2.weight.T + mlp.fc2.bias)


@pytest.mark.parametrize(("dim", "heads", "mlp_ratio"), [(64, 4, 4.0), (32, 2, 2.0), (48, 3, 4.0)])
def test_block_equals_timm_block(dim, heads, mlp_ratio):
    torch.manual_seed(0)
    ours = Block(dim, heads, mlp_ratio)
    _randomize(ours)
    theirs = TimmBlock(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    assert list(ours.state_dict()) == list(theirs.state_dict())  # same names, same order
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 11, dim)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    # The other direction: timm weights load into ours.
    _randomize(theirs, seed=1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_block_layer_norm_eps_and_prenorm_residual():
    blk = Block(32, 4)
    assert blk.norm1.eps == blk.norm2.eps == 1e-6
    assert blk.attn.qkv.bias is not None  # qkv with bias, as in the release
    assert blk.mlp.fc1.out_features == 128
    # Zero output projections turn both branches off: a pre-norm residual block is then the identity.
    with torch.no_grad():
        for lin in (blk.attn.proj, blk.mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
    x = torch.randn(2, 5, 32)
    assert torch.equal(blk(x), x)


@pytest.mark.parametrize(
    ("img", "patch", "C"), [(32, 8, 3), ((32, 48), 8, 1), ((32, 48), (8, 16), 4), ((12, 20), (6, 4), 2)]
)
def test_patch_embedding_is_a_linear_map_of_patchify_in_row_major_order(img, patch, C):
    torch.manual_seed(0)
    pe = PatchEmbedding(img, patch, C, 24, dtype=torch.float64)
    H, W = (img, img) if isinstance(img, int) else img
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    assert pe.grid_size == (H // ph, W // pw)
    assert pe.num_patches == (H // ph) * (W // pw)
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    tokens = pe(x)
    assert tokens.shape == (2, pe.num_patches, 24)
    # Token l is the projection of patch l of patchify (same row-major grid order); the conv kernel (D, C, ph, pw)
    # read in (row, column, channel) order is the equivalent linear weight.
    weight = pe.proj.weight.permute(0, 2, 3, 1).reshape(24, -1)  # (D, ph*pw*C)
    expected = patchify(x, patch) @ weight.T + pe.proj.bias
    torch.testing.assert_close(tokens, expected)


def test_patch_embedding_rejects_wrong_size():
    pe = PatchEmbedding(32, 8, 3, 16)
    with pytest.raises(ValueError, match=r"\(32, 40\).*\(32, 32\)"):
        pe(torch.zeros(1, 3, 32, 40))
    # A layer trusts its arguments (MAEConfig checks the model's sizes); a structural assert names the mismatch.
    with pytest.raises(AssertionError, match=r"\(30, 32\).*\(8, 8\)"):
        PatchEmbedding((30, 32), 8, 3, 16)


@pytest.mark.parametrize("layer", ["block", "attention", "mlp", "patch"])
def test_layers_create_parameters_on_device_and_dtype(layer):
    make = {
        "block": lambda **f: Block(32, 4, **f),
        "attention": lambda **f: Attention(32, 4, **f),
        "mlp": lambda **f: Mlp(32, 64, **f),
        "patch": lambda **f: PatchEmbedding(16, 4, 3, 32, **f),
    }[layer]
    m64 = make(dtype=torch.float64)
    assert {p.dtype for p in m64.parameters()} == {torch.float64}
    meta = make(device="meta")
    assert {p.device.type for p in meta.parameters()} == {"meta"}
