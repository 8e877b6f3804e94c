"""Every fast path computes the same function as the straightforward computation it replaces.

Each test builds the straightforward result here, from the public building blocks (conv patch embedding on every
patch, ``random_masking``, full decoder, ``masked_mse_loss``, ``F.scaled_dot_product_attention``), feeds both the same
noise, and compares values and gradients within float tolerance. Tiny configs keep the file under a few seconds.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mae.functional as MF
from mae import Block, MAEConfig, MaskedAutoEncoder, PatchEmbedding
from mae.layers import CPU_BF16_EXPLICIT_MAX_KEYS, attention

TINY = MAEConfig.from_name("mae_vit_test").to_dict()  # the registered test preset: 32 px, patch 8, 64 wide


def tiny_model(**overrides) -> MaskedAutoEncoder:
    torch.manual_seed(0)
    return MaskedAutoEncoder(**{**TINY, **overrides})


def reference_forward(model: MaskedAutoEncoder, imgs: torch.Tensor, noise: torch.Tensor, mask_ratio: float):
    """The straightforward MAE forward: embed every patch with the conv, then mask, encode, decode, score."""
    cfg = model.config
    x = model.patch_embed(imgs) + model.pos_embed[:, 1:]  # (B, L, D) all patches
    x, mask, ids_restore = MF.random_masking(x, mask_ratio, noise=noise)  # (B, K, D)
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for block in model.blocks:
        x = block(x)
    latent = model.norm(x)
    pred = model.decoder(latent, ids_restore)  # (B, L, P) every patch
    loss = MF.masked_mse_loss(pred, MF.patchify(imgs, cfg.patch_size), mask, cfg.norm_pix_loss)
    return loss, pred, mask, latent


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_grads_close(a: dict, b: dict, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("patch_size,in_chans", [(8, 3), ((4, 8), 1), (4, 4)])
def test_embed_patches_equals_the_conv(patch_size, in_chans):
    torch.manual_seed(0)
    embed = PatchEmbedding((16, 32), patch_size, in_chans, 24)
    imgs = torch.randn(2, in_chans, 16, 32)
    torch.testing.assert_close(embed.embed_patches(MF.patchify(imgs, patch_size)), embed(imgs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_forward_equals_reference_with_gradients(norm_pix_loss):
    model = tiny_model(norm_pix_loss=norm_pix_loss)
    imgs = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, 16)

    loss, pred, mask = model(imgs, noise=noise)
    loss.backward()
    fast = grads(model)
    ref_loss, ref_pred, ref_mask, _ = reference_forward(model, imgs, noise, 0.75)
    ref_loss.backward()
    ref = grads(model)

    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred, ref_pred, rtol=1e-5, atol=1e-5)
    assert torch.equal(mask, ref_mask)
    assert_grads_close(fast, ref)
    assert fast["patch_embed.proj.weight"].abs().sum() > 0  # the kept-patch embedding does train the conv weight


def test_encoder_keeps_official_token_order():
    model = tiny_model()
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    latent, mask, ids_restore = model.encoder(imgs, 0.5, noise=noise)
    _, _, ref_mask, ref_latent = reference_forward(model, imgs, noise, 0.5)
    assert latent.shape == (2, 1 + 8, 64)
    torch.testing.assert_close(latent, ref_latent, rtol=1e-5, atol=1e-5)
    assert torch.equal(mask, ref_mask)
    assert torch.equal(ids_restore, torch.argsort(torch.argsort(noise, dim=1), dim=1))


def test_forward_features_equals_the_conv_embedding_of_every_patch():
    """Mask ratio 0 keeps every patch in the original order: the plain ViT forward on all tokens."""
    model = tiny_model()
    imgs = torch.randn(2, 3, 32, 32)
    latent, mask, ids_restore = model.encoder(imgs, 0.0)
    assert not mask.any() and torch.equal(ids_restore, torch.arange(16).expand(2, 16))
    x = model.patch_embed(imgs) + model.pos_embed[:, 1:]  # (B, L, D) the conv on every patch
    x = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(2, -1, -1), x], dim=1)
    for block in model.blocks:
        x = block(x)
    torch.testing.assert_close(model.forward_features(imgs), model.norm(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(latent, model.norm(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides,mask_ratio",
    [({}, 0.75), ({"norm_pix_loss": True}, 0.75), ({"decoder_depth": 1}, 0.5), ({"in_chans": 1}, 0.9)],
)
def test_loss_only_equals_forward_loss_with_gradients(overrides, mask_ratio):
    model = tiny_model(**overrides)
    imgs = torch.randn(4, model.config.in_chans, 32, 32)
    noise = torch.rand(4, 16)

    loss = model(imgs, mask_ratio, noise=noise, loss_only=True).loss
    loss.backward()
    fast = grads(model)
    ref = model(imgs, mask_ratio, noise=noise).loss
    ref.backward()

    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert_grads_close(fast, grads(model))


def test_forward_loss_only_is_the_fast_path_through_forward():
    model = tiny_model(norm_pix_loss=True)
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)

    out = model(imgs, noise=noise, loss_only=True)  # what a DDP-wrapped training loop calls
    out.loss.backward()
    fast = grads(model)
    ref = model(imgs, noise=noise)
    ref.loss.backward()

    assert out.pred is None
    assert torch.equal(out.mask, ref.mask)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    assert_grads_close(fast, grads(model))


def test_loss_only_same_masking_from_generator():
    model = tiny_model()
    imgs = torch.randn(2, 3, 32, 32)
    loss = model(imgs, generator=torch.Generator().manual_seed(3), loss_only=True).loss
    ref = model(imgs, generator=torch.Generator().manual_seed(3)).loss
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


def test_loss_only_rejects_what_forward_rejects():
    model = tiny_model()
    with pytest.raises(ValueError, match="mask_ratio"):
        model(torch.randn(2, 3, 32, 32), 0.0, loss_only=True)
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(2, 3, 16, 16), loss_only=True)


def test_loss_only_under_bf16_autocast_matches_forward():
    model = tiny_model(norm_pix_loss=True)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model(imgs, noise=noise, loss_only=True).loss
        ref = model(imgs, noise=noise).loss
    assert fast.dtype == ref.dtype == torch.float32  # the loss is reduced in float32
    torch.testing.assert_close(fast, ref, rtol=2e-2, atol=1e-3)  # bf16 rounding, not a different function


def test_block_rows_equals_forward_gathered():
    torch.manual_seed(0)
    block = Block(32, 4)
    x = torch.randn(3, 10, 32)
    rows = torch.stack([torch.randperm(10)[:6] for _ in range(3)])  # (B, M) any order

    fast = block(x, rows)
    fast.square().sum().backward()
    fast_grads = grads(block)
    ref = block(x).gather(1, rows.unsqueeze(-1).expand(-1, -1, 32))
    ref.square().sum().backward()

    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert_grads_close(fast_grads, grads(block))


@pytest.mark.parametrize("shape", [(2, 4, 17, 8), (1, 2, 5, 16)])
def test_bf16_cpu_attention_equals_sdpa(shape):
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))

    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    out = attention(qb, kb, vb)  # the bf16 CPU rule: explicit matmuls + softmax
    assert out.dtype == torch.bfloat16
    out_grads = torch.autograd.grad(out.float().square().sum(), (qb, kb, vb))

    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    for g, r in zip(out_grads, ref_grads, strict=True):
        torch.testing.assert_close(g.float(), r, rtol=5e-2, atol=5e-2)
    # float32 takes SDPA itself
    assert torch.equal(attention(q, k, v), ref)


def test_long_bf16_sequences_take_sdpa():
    """Past the measured crossover the rule hands long sequences back to SDPA (same function, tiled kernel)."""
    n = CPU_BF16_EXPLICIT_MAX_KEYS + 1
    q, k, v = (torch.randn(1, 1, n, 8, dtype=torch.bfloat16) for _ in range(3))
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    short = tuple(t[:, :, :CPU_BF16_EXPLICIT_MAX_KEYS] for t in (q, k, v))
    torch.testing.assert_close(attention(*short), F.scaled_dot_product_attention(*short), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("loss_only", [False, True])
def test_no_graph_breaks_under_dynamo(loss_only):
    """No data-dependent Python (host syncs) in the hot paths: dynamo captures each as one graph."""
    model = tiny_model()
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    explanation = torch._dynamo.explain(model)(imgs, noise=noise, loss_only=loss_only)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_public_loss_still_rejects_an_empty_mask():
    model = tiny_model()
    imgs = torch.randn(2, 3, 32, 32)
    pred = torch.zeros(2, 16, model.config.patch_dim)
    with pytest.raises(ValueError, match="no removed patch"):
        model.loss(imgs, pred, torch.zeros(2, 16))
