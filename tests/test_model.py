"""MaskedAutoEncoder: the paper's data flow against an independent reference, plus shapes, reproducibility,
initialisation, input checks, devices and dtypes, a tiny overfit, and torch.compile.
"""

from __future__ import annotations

import builtins
import math
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, images_for, noise_for, tiny_model

import mae._checks
from mae import EncoderOutput, MAEOutput, MaskedAutoEncoder, create_model

# ---------------------------------------------------------------------------------------------------- reference

EPS = 1e-6  # LayerNorm eps of the release code


def ref_block(x, sd, prefix, num_heads):
    """One pre-norm ViT block in plain ops, weights read from a state dict."""
    B, N, D = x.shape
    d = D // num_heads
    h = F.layer_norm(x, (D,), sd[f"{prefix}.norm1.weight"], sd[f"{prefix}.norm1.bias"], EPS)
    qkv = h @ sd[f"{prefix}.attn.qkv.weight"].T + sd[f"{prefix}.attn.qkv.bias"]  # (B, N, 3D)
    q, k, v = qkv.reshape(B, N, 3, num_heads, d).permute(2, 0, 3, 1, 4)  # 3 x (B, heads, N, d)
    attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)  # (B, heads, N, N)
    h = (attn @ v).transpose(1, 2).reshape(B, N, D)
    x = x + h @ sd[f"{prefix}.attn.proj.weight"].T + sd[f"{prefix}.attn.proj.bias"]
    h = F.layer_norm(x, (D,), sd[f"{prefix}.norm2.weight"], sd[f"{prefix}.norm2.bias"], EPS)
    h = F.gelu(h @ sd[f"{prefix}.mlp.fc1.weight"].T + sd[f"{prefix}.mlp.fc1.bias"])  # exact (erf) GELU
    return x + h @ sd[f"{prefix}.mlp.fc2.weight"].T + sd[f"{prefix}.mlp.fc2.bias"]


def ref_patchify(imgs, ph, pw):
    B, C, H, W = imgs.shape
    x = imgs.reshape(B, C, H // ph, ph, W // pw, pw).permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, ph, pw, C)
    return x.reshape(B, (H // ph) * (W // pw), ph * pw * C)


def reference_mae(sd, cfg, imgs, noise):
    """DESIGN.md section 1, step by step, from the model's state dict only. Returns (loss, pred, mask)."""
    (ph, pw), B, L = cfg.patch_size, imgs.shape[0], cfg.num_patches
    D, Dd = cfg.embed_dim, cfg.decoder_embed_dim
    K = int(L * (1 - cfg.mask_ratio))

    x = F.conv2d(imgs, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(ph, pw))  # (B, D, gh, gw)
    x = x.flatten(2).transpose(1, 2) + sd["pos_embed"][:, 1:]  # (B, L, D), positions added before masking

    # Keep the K patches with the smallest noise, in ascending-noise order; everything else is removed.
    keep = [sorted(range(L), key=lambda i, b=b: noise[b, i].item())[:K] for b in range(B)]
    mask = torch.ones(B, L, dtype=imgs.dtype)
    for b in range(B):
        mask[b, keep[b]] = 0
    x = torch.stack([x[b, keep[b]] for b in range(B)])  # (B, K, D)

    cls = sd["cls_token"] + sd["pos_embed"][:, :1]
    x = torch.cat([cls.expand(B, 1, D), x], dim=1)  # (B, 1+K, D)
    for i in range(cfg.depth):
        x = ref_block(x, sd, f"blocks.{i}", cfg.num_heads)
    x = F.layer_norm(x, (D,), sd["norm.weight"], sd["norm.bias"], EPS)

    x = x @ sd["decoder_embed.weight"].T + sd["decoder_embed.bias"]  # (B, 1+K, Dd)
    full = sd["mask_token"].reshape(1, 1, Dd).repeat(B, 1 + L, 1)  # every patch starts as the mask token
    for b in range(B):
        full[b, 0] = x[b, 0]  # cls
        for j, patch in enumerate(keep[b]):
            full[b, 1 + patch] = x[b, 1 + j]  # visible token back at its own position
    x = full + sd["decoder_pos_embed"]
    for i in range(cfg.decoder_depth):
        x = ref_block(x, sd, f"decoder_blocks.{i}", cfg.decoder_num_heads)
    x = F.layer_norm(x, (Dd,), sd["decoder_norm.weight"], sd["decoder_norm.bias"], EPS)
    pred = (x @ sd["decoder_pred.weight"].T + sd["decoder_pred.bias"])[:, 1:]  # (B, L, P)

    target = ref_patchify(imgs, ph, pw)
    if cfg.norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, L)
    loss = (per_patch * mask).sum() / mask.sum()
    return loss, pred, mask


def _randomize_tokens_and_biases(model):
    """Non-trivial values where the init leaves zeros or ones, so the reference comparison checks their use."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name in ("cls_token", "mask_token"):
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)


REFERENCE_CASES = {
    "square-rgb": {},
    "square-rgb-normpix": {"norm_pix_loss": True},
    "nonsquare-grey-normpix": {"img_size": (32, 48), "in_chans": 1, "norm_pix_loss": True},
    "nonsquare-patch-4ch": {"img_size": (32, 48), "patch_size": (8, 16), "in_chans": 4, "mask_ratio": 0.5},
    "nonsquare-grey-ratio-0.9": {"img_size": (48, 32), "in_chans": 1, "mask_ratio": 0.9, "num_heads": 2},
}


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_forward_equals_independent_reference(case):
    model = tiny_model(**REFERENCE_CASES[case])
    _randomize_tokens_and_biases(model)
    imgs, noise = images_for(model, batch=3), noise_for(model, batch=3)
    loss, pred, mask = model(imgs, noise=noise)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    ref_loss, ref_pred, ref_mask = reference_mae(sd, model.config, imgs, noise)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(pred, ref_pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)


def test_forward_equals_reference_in_float64():
    model = tiny_model(norm_pix_loss=True, img_size=(32, 48), in_chans=1)
    model = model.double()
    _randomize_tokens_and_biases(model)
    imgs, noise = images_for(model), noise_for(model)
    loss, pred, mask = model(imgs, noise=noise)
    ref_loss, ref_pred, _ = reference_mae(model.state_dict(), model.config, imgs, noise)
    assert loss.dtype == pred.dtype == torch.float64
    torch.testing.assert_close(pred, ref_pred, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(loss, ref_loss, atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------------------------------------------- API, shapes

SHAPE_CASES = [
    {},
    {"img_size": (32, 48), "in_chans": 1},
    {"img_size": (32, 48), "patch_size": (8, 16), "in_chans": 4},
    {"img_size": (24, 40), "patch_size": (8, 4), "in_chans": 2, "mask_ratio": 0.5},
    {"img_size": 16, "patch_size": 4, "in_chans": 3, "mask_ratio": 0.6, "decoder_embed_dim": 48},
]


@pytest.mark.parametrize("overrides", SHAPE_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "tiny")
def test_shapes(overrides):
    model = tiny_model(**overrides)
    cfg = model.config
    (H, W), (ph, pw), C = cfg.img_size, cfg.patch_size, cfg.in_chans
    L, P = (H // ph) * (W // pw), ph * pw * C
    K = int(L * (1 - cfg.mask_ratio))
    B = 2
    imgs = images_for(model, batch=B)

    enc = model.encoder(imgs)
    assert isinstance(enc, EncoderOutput)
    latent, mask, ids_restore = enc
    assert latent.shape == (B, 1 + K, cfg.embed_dim)
    assert mask.shape == ids_restore.shape == (B, L)
    assert ids_restore.dtype == torch.int64
    assert mask.sum(dim=1).tolist() == [L - K] * B
    pred = model.decoder(latent, ids_restore)
    assert pred.shape == (B, L, P)
    assert model.unpatchify(pred).shape == (B, C, H, W)
    assert model.patchify(imgs).shape == (B, L, P)
    assert torch.equal(model.unpatchify(model.patchify(imgs)), imgs)
    assert model.forward_features(imgs).shape == (B, 1 + L, cfg.embed_dim)

    out = model(imgs)
    assert isinstance(out, MAEOutput)
    loss, pred, mask = out  # unpacks like the release code's three values
    assert loss.shape == () and torch.isfinite(loss)
    assert pred.shape == (B, L, P) and mask.shape == (B, L)
    assert out.loss is loss and out.pred is pred and out.mask is mask


def test_encoder_and_decoder_compose_to_forward(model):
    imgs, noise = images_for(model), noise_for(model)
    latent, mask, ids_restore = model.encoder(imgs, noise=noise)
    pred = model.decoder(latent, ids_restore)
    out = model(imgs, noise=noise)
    assert torch.equal(out.pred, pred) and torch.equal(out.mask, mask)
    assert torch.equal(out.loss, model.loss(imgs, pred, mask))


def test_mask_ratio_zero_encoder_equals_forward_features(model):
    imgs = images_for(model)
    latent, mask, ids_restore = model.encoder(imgs, mask_ratio=0.0, noise=noise_for(model))
    assert not mask.any()
    assert torch.equal(ids_restore, torch.arange(16).expand(2, 16))
    torch.testing.assert_close(latent, model.forward_features(imgs), atol=1e-6, rtol=1e-6)


def test_mask_ratio_argument_overrides_the_default(model):
    imgs = images_for(model)
    assert model.encoder(imgs).latent.shape[1] == 1 + 4  # default 0.75 of 16 patches
    assert model.encoder(imgs, 0.5).latent.shape[1] == 1 + 8
    assert model(imgs, mask_ratio=0.25).mask.sum().item() == 2 * 4
    assert tiny_model(mask_ratio=0.5).encoder(imgs).latent.shape[1] == 1 + 8


def test_loss_ignores_predictions_on_visible_patches(model):
    imgs, noise = images_for(model), noise_for(model)
    latent, mask, ids_restore = model.encoder(imgs, noise=noise)
    pred = model.decoder(latent, ids_restore).detach().requires_grad_(True)
    model.loss(imgs, pred, mask).backward()
    visible = mask == 0
    assert torch.all(pred.grad[visible] == 0)
    assert torch.all(pred.grad[~visible].abs().sum(-1) > 0)


def test_loss_with_no_removed_patch_raises(model):
    imgs = images_for(model)
    pred = torch.zeros(2, 16, 192)
    with pytest.raises(ValueError, match="no removed patch"):
        model.loss(imgs, pred, torch.zeros(2, 16))
    # A ratio so small that int(L * (1 - r)) == L removes nothing: forward refuses rather than returning NaN.
    with pytest.raises(ValueError, match="mask_ratio=1e-17 removes no patch"):
        model(imgs, mask_ratio=1e-17)
    with pytest.raises(ValueError, match="mask_ratio=0.0 removes no patch"):
        model(imgs, mask_ratio=0.0)


def test_load_state_dict_round_trip_gives_identical_outputs(model):
    other = tiny_model(seed=99)
    imgs, noise = images_for(model), noise_for(model)
    assert not torch.equal(other(imgs, noise=noise).pred, model(imgs, noise=noise).pred)
    other.load_state_dict(model.state_dict(), strict=True)
    a, b = model(imgs, noise=noise), other(imgs, noise=noise)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.pred, b.pred)


def test_every_trainable_parameter_gets_a_gradient(model):
    model(images_for(model), noise=noise_for(model)).loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} is not used by the loss"


def test_train_and_eval_modes_agree(model):
    # Pretraining has no dropout or drop path (DESIGN.md section 4): the mode must not change the outputs.
    imgs, noise = images_for(model), noise_for(model)
    a = model.train()(imgs, noise=noise)
    b = model.eval()(imgs, noise=noise)
    assert torch.equal(a.pred, b.pred) and torch.equal(a.loss, b.loss)


# ---------------------------------------------------------------------------------------------------- reproducibility


def test_same_noise_same_outputs(model):
    imgs, noise = images_for(model), noise_for(model)
    a, b = model(imgs, noise=noise), model(imgs, noise=noise.clone())
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)


def test_seeded_generator_reproduces_and_seeds_differ(model):
    imgs = images_for(model, batch=4)
    a = model(imgs, generator=torch.Generator().manual_seed(0))
    b = model(imgs, generator=torch.Generator().manual_seed(0))
    c = model(imgs, generator=torch.Generator().manual_seed(1))
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(a.mask, c.mask)
    assert not torch.equal(a.loss, c.loss)
    # The generator only supplies the noise: drawing it ourselves gives the same result.
    drawn = torch.rand(4, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(imgs, noise=drawn).pred, a.pred)


def test_global_seed_reproduces_when_nothing_is_passed(model):
    imgs = images_for(model)
    torch.manual_seed(5)
    a = model(imgs)
    torch.manual_seed(5)
    b = model(imgs)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.loss, b.loss)


# ---------------------------------------------------------------------------------------------------- position tables


def reference_sincos_row(D, x, y):
    quarter = D // 4
    omegas = [1.0 / 10000 ** (i / quarter) for i in range(quarter)]
    row = []
    for pos in (x, y):  # column half, then row half
        row += [math.sin(pos * w) for w in omegas] + [math.cos(pos * w) for w in omegas]
    return row


@pytest.mark.parametrize("overrides", [{}, {"img_size": (32, 48)}, {"img_size": (48, 24), "patch_size": (8, 4)}])
def test_position_tables_are_fixed_sincos(overrides):
    model = tiny_model(**overrides)
    gh, gw = model.config.grid_size
    for name, D in (("pos_embed", model.config.embed_dim), ("decoder_pos_embed", model.config.decoder_embed_dim)):
        table = getattr(model, name)
        assert table.shape == (1, 1 + gh * gw, D)
        assert not table.requires_grad
        expected = [[0.0] * D] + [reference_sincos_row(D, x, y) for y in range(gh) for x in range(gw)]
        torch.testing.assert_close(table[0].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)
        assert table[0, 1:].abs().sum(dim=1).min() > 0  # no zero rows: the decoder can locate every mask token


def test_position_tables_stay_frozen_through_training(model):
    before = {n: getattr(model, n).detach().clone() for n in ("pos_embed", "decoder_pos_embed")}
    trained_before = model.decoder_pred.weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    for _ in range(2):
        opt.zero_grad()
        model(images_for(model), noise=noise_for(model)).loss.backward()
        opt.step()
    for name, value in before.items():
        assert getattr(model, name).grad is None
        assert torch.equal(getattr(model, name), value)
    assert not torch.equal(model.decoder_pred.weight, trained_before)  # the step did train the rest
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"pos_embed", "decoder_pos_embed"}


# ---------------------------------------------------------------------------------------------------- initialisation


def test_initialisation_follows_the_release():
    torch.manual_seed(0)
    model = MaskedAutoEncoder(img_size=32, patch_size=8, in_chans=3, embed_dim=512, depth=1, num_heads=8,
                              decoder_embed_dim=512, decoder_depth=1, decoder_num_heads=8)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            assert module.eps == 1e-6, name
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
        elif isinstance(module, torch.nn.Linear):
            assert torch.all(module.bias == 0), name
            fan_out, fan_in = module.weight.shape
            bound = math.sqrt(6 / (fan_in + fan_out))  # xavier-uniform, qkv as one (3D, D) matrix
            w = module.weight.abs()
            assert w.max() <= bound and w.max() > 0.95 * bound, name
    # Tokens: N(0, 0.02). 512 samples each: the sample std is within ~10% with overwhelming probability.
    for token in (model.cls_token, model.mask_token):
        assert 0.017 < token.std().item() < 0.023
        assert abs(token.mean().item()) < 0.005
    # Patch projection: xavier-uniform on its (D, C*p*p) view -> bound sqrt(6 / (D + C*p*p)), far above the
    # PyTorch conv default 1/sqrt(C*p*p); the bias keeps PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    w = model.patch_embed.proj.weight
    bound = math.sqrt(6 / (512 + 3 * 8 * 8))
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    bias = model.patch_embed.proj.bias
    assert bias.abs().max() <= 1 / math.sqrt(3 * 8 * 8) and bias.abs().max() > 0


# ---------------------------------------------------------------------------------------------------- input checks


@pytest.mark.slow
def test_building_vit_b_reads_the_free_memory_once(monkeypatch):
    """One memory bound for the whole model, none per layer: building ViT-B on the CPU reads the free host memory
    once (/proc/meminfo and the cgroup's memory.max and memory.current: at most 3 files)."""
    files, probes = [], []
    real_open, real_available = builtins.open, mae._checks.available_bytes

    def counting_open(file, *args, **kwargs):
        if str(file).startswith(("/proc/meminfo", "/sys/fs/cgroup/memory")):
            files.append(str(file))
        return real_open(file, *args, **kwargs)

    def counting_available(device):
        probes.append(device)
        return real_available(device)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(mae._checks, "available_bytes", counting_available)
    create_model("mae_vit_base_patch16")
    assert len(probes) == 1 and len(files) <= 3, (probes, files)


def test_forward_checks_the_images_exactly_once(model, monkeypatch):
    """forward checks what the user passed in where it enters; the stages below trust it (no second check)."""
    calls = []
    real = mae._checks.check_images
    monkeypatch.setattr(mae._checks, "check_images", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    imgs = images_for(model)
    for kwargs in ({}, {"loss_only": True}, {"masking": "block"}, {"noise": noise_for(model)}):
        calls.clear()
        model(imgs, **kwargs)
        assert len(calls) == 1, kwargs


def test_rejects_wrong_number_of_dimensions(model):
    with pytest.raises(ValueError, match=r"4 dimensions.*got 3 .*\(3, 32, 32\)"):
        model(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"got 5 .*\(1, 1, 3, 32, 32\)"):
        model.encoder(torch.zeros(1, 1, 3, 32, 32))


def test_rejects_wrong_channels(model):
    with pytest.raises(ValueError, match=r"1 channels.*in_chans=3"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"3 channels.*in_chans=4"):
        tiny_model(in_chans=4).forward_features(torch.zeros(2, 3, 32, 32))


def test_rejects_wrong_image_size(model):
    with pytest.raises(ValueError, match=r"\(32, 48\).*img_size=\(32, 32\)"):
        model(torch.zeros(2, 3, 32, 48))
    with pytest.raises(ValueError, match=r"\(32, 32\).*img_size=\(48, 32\)"):
        tiny_model(img_size=(48, 32)).encoder(torch.zeros(2, 3, 32, 32))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_rejects_integer_images(model, dtype):
    with pytest.raises(TypeError, match=f"floating-point.*{dtype}"):
        model(torch.zeros(2, 3, 32, 32, dtype=dtype))


def test_rejects_non_tensor_images(model):
    with pytest.raises(TypeError, match="ndarray"):
        model(torch.zeros(2, 3, 32, 32).numpy())


@pytest.mark.parametrize(
    ("ratio", "exc", "match"),
    [(1.0, ValueError, r"mask_ratio.*\[0, 1\).*1\.0"), (-0.25, ValueError, r"-0\.25"), (2, ValueError, "got 2"),
     (float("nan"), ValueError, "nan"), ("0.75", TypeError, r"'0\.75'"), (True, TypeError, "True"),
     (torch.tensor(0.5), TypeError, "tensor")],
)
def test_rejects_bad_mask_ratio(model, ratio, exc, match):
    imgs = images_for(model)
    with pytest.raises(exc, match=match):
        model(imgs, mask_ratio=ratio)
    with pytest.raises(exc, match=match):
        model.encoder(imgs, ratio)
    with pytest.raises(exc, match=match):
        tiny_model(mask_ratio=ratio)


def test_rejects_noise_of_wrong_shape(model):
    with pytest.raises(ValueError, match=r"noise.*\(2, 16\).*\(2, 15\)"):
        model(images_for(model), noise=torch.rand(2, 15))
    with pytest.raises(ValueError, match=r"noise.*\(2, 16\).*\(16,\)"):
        model.encoder(images_for(model), noise=torch.rand(16))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_rejects_non_finite_noise(model, bad):
    noise = torch.rand(2, 16)
    noise[1, 3] = bad
    with pytest.raises(ValueError, match="noise holds NaN or infinite values"):
        model(images_for(model), noise=noise)
    with pytest.raises(ValueError, match="noise holds NaN or infinite values"):
        model.encoder(images_for(model), noise=noise)


def test_rejects_inputs_on_another_device():
    meta_model = MaskedAutoEncoder(**TINY, device="meta")
    with pytest.raises(ValueError, match="imgs is on cpu but the model is on meta"):
        meta_model(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="noise is on cpu.*meta"):
        meta_model.encoder(torch.zeros(2, 3, 32, 32, device="meta"), noise=torch.rand(2, 16))


def test_decoder_rejects_mismatched_ids_restore(model):
    latent, _, ids_restore = model.encoder(images_for(model))
    with pytest.raises(ValueError, match=r"ids_restore.*\(2, 16\).*\(2, 15\)"):
        model.decoder(latent, ids_restore[:, :15])
    with pytest.raises(ValueError, match=r"ids_restore.*\(2, 16\).*\(1, 16\)"):
        model.decoder(latent, ids_restore[:1])
    with pytest.raises(ValueError, match=r"latent.*64.*\(2, 5, 32\)"):
        model.decoder(torch.zeros(2, 5, 32), ids_restore)
    with pytest.raises(ValueError, match=r"latent \(2, 18, 64\)"):
        model.decoder(torch.zeros(2, 18, 64), ids_restore)  # more kept tokens than patches


def test_loss_rejects_mismatched_pred_and_mask(model):
    imgs = images_for(model)
    with pytest.raises(ValueError, match=r"pred.*\(2, 16, 192\).*\(2, 16, 191\)"):
        model.loss(imgs, torch.zeros(2, 16, 191), torch.ones(2, 16))
    with pytest.raises(ValueError, match=r"mask.*\(2, 16\).*\(2, 15\)"):
        model.loss(imgs, torch.zeros(2, 16, 192), torch.ones(2, 15))


def test_rejects_bad_construction_arguments():
    with pytest.raises(ValueError, match=r"\(30, 32\).*\(8, 8\)"):
        tiny_model(img_size=(30, 32))
    with pytest.raises(ValueError, match="embed_dim=64.*num_heads=5"):
        tiny_model(num_heads=5)
    with pytest.raises(ValueError, match="in_chans.*0"):
        tiny_model(in_chans=0)
    with pytest.raises(TypeError, match=r"img_size.*\(32, 32, 3\)"):
        tiny_model(img_size=(32, 32, 3))
    with pytest.raises(TypeError, match="dtype.*torch.int64"):
        tiny_model(dtype=torch.int64)


# ---------------------------------------------------------------------------------------------------- devices, dtypes


def test_float64_model_computes_in_float64():
    model = tiny_model(dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    out = model(images_for(model), noise=noise_for(model))
    assert out.pred.dtype == out.loss.dtype == torch.float64


def test_meta_device_builds_without_memory_and_runs_shape_inference():
    model = create_model("mae_vit_base_patch16", device="meta")
    assert model.device.type == "meta"
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    imgs = torch.empty(2, 3, 224, 224, device="meta")
    latent, mask, ids_restore = model.encoder(imgs)
    assert latent.shape == (2, 1 + 49, 768) and latent.device.type == "meta"
    assert model.decoder(latent, ids_restore).shape == (2, 196, 768)
    loss, pred, mask = model(imgs)  # the whole forward works for shape inference / FLOP counting
    assert loss.shape == () and pred.shape == (2, 196, 768) and mask.shape == (2, 196)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    # float64 on both sides: no TF32 rounding (on by default for cuDNN convolutions), so the tolerance can be tight.
    cpu_model = tiny_model(norm_pix_loss=True, dtype=torch.float64)
    gpu_model = tiny_model(norm_pix_loss=True, dtype=torch.float64, device="cuda")
    gpu_model.load_state_dict(cpu_model.state_dict())
    assert {p.device.type for p in gpu_model.parameters()} == {"cuda"}
    imgs, noise = images_for(cpu_model), noise_for(cpu_model)
    a = cpu_model(imgs, noise=noise)
    b = gpu_model(imgs.cuda(), noise=noise.cuda())
    assert torch.equal(a.mask, b.mask.cpu())
    torch.testing.assert_close(b.pred.cpu(), a.pred, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(b.loss.cpu(), a.loss, atol=1e-10, rtol=1e-10)


@pytest.mark.cuda
def test_cuda_generator_inputs_and_autocast():
    model = tiny_model(device="cuda")
    imgs = images_for(model)
    a = model(imgs, generator=torch.Generator(device="cuda").manual_seed(0))
    b = model(imgs, generator=torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.pred, b.pred)
    cpu_gen = model(imgs, generator=torch.Generator().manual_seed(0))  # a CPU generator also works
    assert cpu_gen.mask.device.type == "cuda"
    with pytest.raises(ValueError, match="imgs is on cpu but the model is on cuda"):
        model(imgs.cpu())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(imgs, noise=noise_for(model))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------- training


def test_tiny_model_overfits_one_batch():
    model = tiny_model(embed_dim=64, depth=2, decoder_embed_dim=64, decoder_depth=1)
    imgs, noise = images_for(model, batch=4), noise_for(model, batch=4)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.0)
    first = model(imgs, noise=noise).loss.item()
    losses = []
    for _ in range(300):
        loss = model(imgs, noise=noise).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] * 5 <= first:
            break
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] * 5 <= first, f"loss went from {first:.4f} to {losses[-1]:.4f} in {len(losses)} steps"


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = tiny_model(depth=1, decoder_depth=1, norm_pix_loss=True)
    imgs, noise = images_for(model), noise_for(model)
    eager = model(imgs, noise=noise)
    eager.loss.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    start = time.perf_counter()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: the forward has no graph break
    out = compiled(imgs, noise=noise)
    out.loss.backward()
    elapsed = time.perf_counter() - start
    print(f"torch.compile forward+backward: {elapsed:.1f} s")  # shown with pytest -s; the report quotes it
    assert torch.equal(out.mask, eager.mask)
    torch.testing.assert_close(out.pred, eager.pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, eager.loss, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, eager_grads[name], atol=1e-5, rtol=1e-4, msg=name)
