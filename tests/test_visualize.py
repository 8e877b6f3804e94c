"""mae.visualize: the reconstruction tensors, the figure (norm_pix, channels, shapes), atomic PNGs, errors."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from mae import MaskedAutoEncoder
from mae import functional as MF
from mae import visualize as V
from mae.visualize import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    loss_curve_figure,
    reconstruct,
    reconstruction_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny(img_size=32, in_chans=3, norm_pix_loss=False, mask_ratio=0.75, seed=0):
    torch.manual_seed(seed)
    return MaskedAutoEncoder(
        img_size=img_size, patch_size=8, in_chans=in_chans, embed_dim=64, depth=2, num_heads=4,
        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4, norm_pix_loss=norm_pix_loss,
        mask_ratio=mask_ratio,
    )


def batch(B=3, C=3, H=32, W=32, seed=1):
    # Per-patch means and scales far from (0, 1), so a missing or wrong de-normalisation shows.
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=g) * 3 + 1


# ---------------------------------------------------------------- reconstruct: tensors


@pytest.mark.parametrize("in_chans", [1, 3, 4])
@pytest.mark.parametrize("img_size", [32, (32, 48)])
def test_shapes_dtype_device(in_chans, img_size):
    model = tiny(img_size=img_size, in_chans=in_chans)
    H, W = (img_size, img_size) if isinstance(img_size, int) else img_size
    rec = reconstruct(model, batch(2, in_chans, H, W))
    for name in ("original", "masked", "reconstruction", "pasted"):
        t = getattr(rec, name)
        assert t.shape == (2, in_chans, H, W), name
        assert t.dtype == torch.float32 and t.device.type == "cpu", name
    assert rec.mask.shape == (2, 1, H, W)
    assert set(rec.mask.unique().tolist()) == {0.0, 1.0}
    L = (H // 8) * (W // 8)
    kept = MF.num_kept(L, 0.75)
    assert rec.mask.sum(dim=(1, 2, 3)).tolist() == [(L - kept) * 64.0] * 2  # whole 8x8 patches removed


@pytest.mark.parametrize("img_size", [32, (32, 48)])
def test_mask_placement_follows_the_model(img_size):
    """The pixel mask is the model's (B, L) mask laid out row-major over the patch grid, even for non-square grids."""
    model = tiny(img_size=img_size)
    H, W = model.config.img_size
    imgs = batch(2, 3, H, W)
    noise = torch.rand(2, model.config.num_patches, generator=torch.Generator().manual_seed(3))
    rec = reconstruct(model, imgs, noise=noise)
    _, mask, _ = model.encoder(imgs, noise=noise)
    # Every patch is constant, so its top-left pixel stands for it.
    assert torch.equal(rec.mask[:, 0, ::8, ::8].flatten(1), mask)
    assert torch.equal(rec.mask, rec.mask[:, :, ::8, ::8].repeat_interleave(8, 2).repeat_interleave(8, 3))


def test_pasted_and_masked_are_exact():
    model = tiny()
    rec = reconstruct(model, batch(4), generator=torch.Generator().manual_seed(0))
    removed = rec.mask.bool().expand_as(rec.original)
    visible = ~removed
    assert removed.any() and visible.any()
    # Pasted: bit-identical to the input where visible, to the prediction where removed.
    assert torch.equal(rec.pasted[visible], rec.original[visible])
    assert torch.equal(rec.pasted[removed], rec.reconstruction[removed])
    # Masked input: zero where removed, the input where visible.
    assert torch.equal(rec.masked[removed], torch.zeros(int(removed.sum())))
    assert torch.equal(rec.masked[visible], rec.original[visible])
    # The prediction really differs from the input (an untrained model), so the pasted check above is not vacuous.
    assert not torch.allclose(rec.reconstruction[removed], rec.original[removed])


def test_reconstruction_is_the_models_prediction():
    model = tiny().eval()
    imgs = batch(2)
    noise = torch.rand(2, model.config.num_patches, generator=torch.Generator().manual_seed(5))
    rec = reconstruct(model, imgs, noise=noise)
    with torch.no_grad():
        _, pred, _ = model(imgs, noise=noise)
    torch.testing.assert_close(rec.reconstruction, model.unpatchify(pred))
    torch.testing.assert_close(rec.original, imgs)


def test_mask_ratio_and_generator_are_passed_through():
    model = tiny()
    imgs = batch(2)
    rec = reconstruct(model, imgs, mask_ratio=0.5)
    assert rec.mask.mean().item() == pytest.approx(0.5)
    a = reconstruct(model, imgs, generator=torch.Generator().manual_seed(7))
    b = reconstruct(model, imgs, generator=torch.Generator().manual_seed(7))
    c = reconstruct(model, imgs, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.pasted, b.pasted)
    assert not torch.equal(a.mask, c.mask)
    # mask_ratio 0 removes nothing: pasted is the input itself.
    zero = reconstruct(model, imgs, mask_ratio=0.0)
    assert zero.mask.sum() == 0 and torch.equal(zero.pasted, zero.original)


# ---------------------------------------------------------------- norm_pix_loss de-normalisation


def _perfect_decoder(model, imgs, normalised):
    """Make the decoder output the exact training target, (normalised) patchified pixels of ``imgs``."""
    target = model.patchify(imgs)
    out = MF.normalize_patches(target) if normalised else target
    model.decoder = lambda latent, ids_restore: out  # instance attribute shadows the method
    return model


def test_norm_pix_perfect_prediction_reconstructs_the_image():
    imgs = batch(2)
    model = _perfect_decoder(tiny(norm_pix_loss=True), imgs, normalised=True)
    rec = reconstruct(model, imgs)
    removed = rec.mask.bool().expand_as(imgs)
    torch.testing.assert_close(rec.reconstruction[removed], imgs[removed], atol=1e-4, rtol=0)
    torch.testing.assert_close(rec.pasted, imgs, atol=1e-4, rtol=0)


def test_norm_pix_check_is_sharp():
    """The tolerance above would catch a missing de-normalisation or a biased variance (the loss uses unbiased)."""
    imgs = batch(2)
    target = MF.patchify(imgs, 8)
    norm = MF.normalize_patches(target)
    missing = norm  # no de-normalisation at all
    biased = norm * (target.var(-1, keepdim=True, unbiased=False) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
    assert (missing - target).abs().max() > 1e-1
    assert (biased - target).abs().max() > 1e-3
    # And the non-norm-pix path must NOT de-normalise: a perfect raw prediction gives back the image exactly.
    model = _perfect_decoder(tiny(norm_pix_loss=False), imgs, normalised=False)
    torch.testing.assert_close(reconstruct(model, imgs).reconstruction, imgs)


def test_denormalisation_uses_the_losses_eps():
    eps = inspect.signature(MF.patch_mean_std).parameters["eps"].default
    assert inspect.signature(MF.normalize_patches).parameters["eps"].default == eps
    # Constant patches (var 0) are where eps matters: the round trip still gives the patch back.
    target = torch.full((1, 2, 12), 0.3)
    target[0, 1] = torch.linspace(-1, 1, 12)
    torch.testing.assert_close(V._denormalize_patches(MF.normalize_patches(target), target), target)


def test_norm_pix_figure_says_so():
    model, imgs = tiny(norm_pix_loss=True), batch(2)
    title = reconstruction_figure(model, imgs).get_suptitle()
    assert "norm_pix_loss" in title and "mean and std" in title
    assert "norm_pix_loss" not in reconstruction_figure(tiny(), imgs).get_suptitle()


# ---------------------------------------------------------------- model mode and devices


@pytest.mark.parametrize("training", [True, False])
def test_mode_is_restored(training):
    model = tiny().train(training)
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(m.training))
    reconstruct(model, batch(1))
    assert seen == [False]  # ran in eval mode
    assert all(m.training == training for m in model.modules())


def test_mixed_modes_are_restored_even_after_an_error():
    model = tiny().train()
    model.decoder_blocks.eval()  # a caller's deliberate choice must survive
    before = [m.training for m in model.modules()]
    with pytest.raises(ValueError, match="channels"):
        reconstruct(model, batch(1, C=1))
    assert [m.training for m in model.modules()] == before
    reconstruct(model, batch(1))
    assert [m.training for m in model.modules()] == before


def test_wrapped_models_are_unwrapped():
    class Wrapper(nn.Module):  # stands in for DistributedDataParallel's .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    model, imgs = tiny(), batch(1)
    g = torch.Generator
    a = reconstruct(Wrapper(model), imgs, generator=g().manual_seed(0))
    b = reconstruct(model, imgs, generator=g().manual_seed(0))
    assert torch.equal(a.pasted, b.pasted)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_model_gives_cpu_tensors_matching_cpu():
    model, imgs = tiny(), batch(2)
    noise = torch.rand(2, model.config.num_patches)
    cpu = reconstruct(model, imgs, noise=noise)
    gpu = reconstruct(model.cuda(), imgs.cuda(), noise=noise.cuda())
    assert all(t.device.type == "cpu" for t in gpu)
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert isinstance(reconstruction_figure(model, imgs.cuda()), Figure)


# ---------------------------------------------------------------- the figure


def _panel(fig, row, col):
    return np.asarray(fig.axes[row * 4 + col].images[0].get_array())


def test_figure_layout_and_pixels_rgb():
    model, imgs = tiny(), batch(5)
    fig = reconstruction_figure(model, imgs, mean=IMAGENET_MEAN, std=IMAGENET_STD, max_images=3, title="run x")
    assert isinstance(fig, Figure) and isinstance(fig.canvas, FigureCanvasAgg)
    assert len(fig.axes) == 3 * 4
    assert [ax.get_title() for ax in fig.axes[:4]] == [
        "original", "masked (75% removed)", "prediction (visible: untrained)", "reconstruction + visible"]
    assert fig.get_suptitle().startswith("run x")
    # a newcomer is told why the visible positions of the prediction look wrong
    assert "visible positions are never trained" in " ".join(fig.get_suptitle().split())
    # The displayed original is the de-normalised input, clipped to [0, 1], as (H, W, 3).
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (imgs[2] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(_panel(fig, 2, 0), expected, atol=1e-6)


def test_figure_without_mean_std_clips_values_as_given():
    model, imgs = tiny(), batch(1)
    fig = reconstruction_figure(model, imgs)
    np.testing.assert_allclose(_panel(fig, 0, 0), imgs[0].clamp(0, 1).permute(1, 2, 0).numpy())
    assert "clipped to [0, 1]" in fig.get_suptitle()


def test_one_channel_is_grey():
    model, imgs = tiny(in_chans=1), batch(2, C=1)
    fig = reconstruction_figure(model, imgs, mean=[0.5], std=[0.25])
    panel = _panel(fig, 1, 0)
    assert panel.shape == (32, 32)
    assert fig.axes[0].images[0].get_cmap().name == "gray"
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)  # not auto-stretched per image
    np.testing.assert_allclose(panel, (imgs[1, 0] * 0.25 + 0.5).clamp(0, 1).numpy(), atol=1e-6)


def test_four_channels_show_the_first_three_as_rgb():
    model, imgs = tiny(in_chans=4), batch(1, C=4)
    fig = reconstruction_figure(model, imgs, mean=[0.1, 0.2, 0.3, 0.4], std=[1, 1, 1, 2])
    panel = _panel(fig, 0, 0)
    assert panel.shape == (32, 32, 3)
    expected = (imgs[0, :3] + torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)).clamp(0, 1).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(panel, expected, atol=1e-6)
    assert "channels 0-2 shown as RGB" in fig.get_suptitle()


def test_two_channels_show_channel_zero_in_grey():
    model, imgs = tiny(in_chans=2), batch(1, C=2)
    fig = reconstruction_figure(model, imgs)
    np.testing.assert_allclose(_panel(fig, 0, 0), imgs[0, 0].clamp(0, 1).numpy())
    assert "channel 0 shown in grey" in fig.get_suptitle()


def test_non_square_images():
    model, imgs = tiny(img_size=(32, 48)), batch(2, H=32, W=48)
    fig = reconstruction_figure(model, imgs)
    assert _panel(fig, 1, 3).shape == (32, 48, 3)
    w, h = fig.get_size_inches()
    assert w > h  # two wide rows of four: the layout follows the aspect ratio


def test_noise_for_the_whole_batch_is_cut_with_the_images():
    model, imgs = tiny(), batch(5)
    noise = torch.rand(5, model.config.num_patches, generator=torch.Generator().manual_seed(2))
    fig = reconstruction_figure(model, imgs, noise=noise, max_images=2)
    rec = reconstruct(model, imgs[:2], noise=noise[:2])
    np.testing.assert_allclose(_panel(fig, 1, 3), rec.pasted[1].clamp(0, 1).permute(1, 2, 0).numpy())


def test_pyplot_state_is_untouched():
    before = sys.modules["matplotlib.pyplot"].get_fignums() if "matplotlib.pyplot" in sys.modules else None
    reconstruction_figure(tiny(), batch(1))
    loss_curve_figure([0, 1, 2], [3.0, 2.0, 1.0])
    if before is not None:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == before


# ---------------------------------------------------------------- PNG files


def _check_png(path, min_size=None):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    if min_size is not None:
        assert img.shape[0] >= min_size[0] and img.shape[1] >= min_size[1]
    assert img.std() > 0.01  # not a blank canvas
    return img


def test_reconstruction_png_is_written(tmp_path):
    path = tmp_path / "deep" / "er" / "recon.png"
    fig = reconstruction_figure(tiny(), batch(2), path=path, dpi=80)
    w, h = fig.get_size_inches()
    img = _check_png(path)
    assert img.shape[:2] == (round(h * 80), round(w * 80))
    assert [p.name for p in path.parent.iterdir()] == ["recon.png"]  # no temp file left behind


def test_png_overwrite_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "recon.png"
    reconstruction_figure(tiny(), batch(1), path=str(path))
    good = path.read_bytes()

    def broken_savefig(self, f, **kwargs):
        Path(f).write_bytes(PNG_SIGNATURE + b"half a picture")  # the temporary file beside the target
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        reconstruction_figure(tiny(), batch(1), path=path)
    assert path.read_bytes() == good  # the previous figure is intact
    assert [p.name for p in tmp_path.iterdir()] == ["recon.png"]


def test_loss_curve_png(tmp_path):
    steps = np.arange(200)
    losses = torch.tensor(np.exp(-steps / 80) + 0.05 * np.random.default_rng(0).random(200))
    fig = loss_curve_figure(steps, losses, path=tmp_path / "out" / "loss.png", title="tiny run")
    _check_png(tmp_path / "out" / "loss.png")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_title() == "tiny run"
    assert len(ax.lines) == 2  # raw + moving average for a long run


def test_loss_curve_scales_and_non_finite_values():
    fig = loss_curve_figure([0, 1, 2, 3], [1.0, float("nan"), 0.5, float("inf")])
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [1.0, 0.5])
    assert "2 non-finite values not shown" in ax.get_title()
    assert loss_curve_figure([0, 1], [1.0, -0.5]).axes[0].get_yscale() == "linear"  # log impossible
    assert loss_curve_figure([0, 1], [1.0, 0.5], log_y=False).axes[0].get_yscale() == "linear"


# ---------------------------------------------------------------- errors


def test_bad_images_get_the_models_errors():
    model = tiny()
    with pytest.raises(ValueError, match="3 .*in_chans|channels"):
        reconstruct(model, batch(1, C=1))
    with pytest.raises(ValueError, match="img_size"):
        reconstruct(model, batch(1, H=40))
    with pytest.raises(ValueError, match="4 dimensions"):
        reconstruct(model, batch(1)[0])
    with pytest.raises(TypeError, match="floating-point"):
        reconstruct(model, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        reconstruction_figure(model, np.zeros((1, 3, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="is on meta but the model is on cpu"):
        reconstruct(model, torch.empty(1, 3, 32, 32, device="meta"))
    with pytest.raises(ValueError, match="noise must have shape"):
        reconstruct(model, batch(2), noise=torch.rand(2, 3))
    with pytest.raises(ValueError, match="mask_ratio"):
        reconstruct(model, batch(1), mask_ratio=1.0)


def test_bad_arguments():
    model, imgs = tiny(), batch(1)
    with pytest.raises(TypeError, match="MaskedAutoEncoder"):
        reconstruct(nn.Linear(2, 2), imgs)
    with pytest.raises(ValueError, match=r"mean must have one value per image channel \(length 3\)"):
        reconstruction_figure(model, imgs, mean=[0.5], std=[0.5])
    with pytest.raises(ValueError, match="std must have one value per image channel"):
        reconstruction_figure(model, imgs, mean=IMAGENET_MEAN, std=[0.5, 0.5])
    with pytest.raises(ValueError, match="both mean and std"):
        reconstruction_figure(model, imgs, mean=IMAGENET_MEAN)
    with pytest.raises(ValueError, match="std must be positive"):
        reconstruction_figure(model, imgs, mean=IMAGENET_MEAN, std=[0.2, 0.0, 0.2])
    with pytest.raises(TypeError, match="mean must be a sequence"):
        reconstruction_figure(model, imgs, mean="abc", std=IMAGENET_STD)
    with pytest.raises(ValueError, match="max_images must be a positive int, got 0"):
        reconstruction_figure(model, imgs, max_images=0)


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="existing directory"):
        reconstruction_figure(tiny(), batch(1), path=tmp_path)
    with pytest.raises(TypeError, match="path must be"):
        loss_curve_figure([0], [1.0], path=3)


def test_bad_loss_curves():
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        loss_curve_figure([0, 1, 2], [1.0, 2.0])
    with pytest.raises(ValueError, match="losses must be 1-D"):
        loss_curve_figure([0, 1], [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match="no finite value"):
        loss_curve_figure([0, 1], [float("nan"), float("nan")])
    with pytest.raises(TypeError, match="steps must be a 1-D sequence"):
        loss_curve_figure(["a", "b"], [1.0, 2.0])
