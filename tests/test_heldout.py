"""The held-out score of a run: the model's masked-patch MSE against the mean-colour baseline."""

from __future__ import annotations

import pytest
import torch

from mae import create_model
from mae import functional as MF
from mae.config import IMAGENET_MEAN, IMAGENET_STD
from mae.train.data.augment import MaskingSpec, augment_sample, normalize_on_device
from mae.train.data.datasets import skimage_photos
from mae.train.report import HELDOUT_SEED, heldout_batch, heldout_scores, mean_colour_prediction


def test_mean_colour_prediction_is_the_mean_of_the_visible_pixels_per_channel():
    imgs = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4) ** 1.5  # distinct values everywhere
    mask = torch.tensor([[0.0, 1, 1, 0], [1, 1, 1, 0]])  # 2x2 grid of 2x2 patches, 1 = removed
    pred = mean_colour_prediction(MF.patchify(imgs, 2), mask, in_chans=3)
    # The same mean computed in image space: a pixel mask from the patch mask.
    visible = (1 - mask).view(2, 1, 2, 2).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # (B, 1, H, W)
    colour = (imgs * visible).sum(dim=(2, 3)) / visible.sum(dim=(2, 3))  # (B, C)
    expected = MF.patchify(colour.view(2, 3, 1, 1).expand(2, 3, 4, 4), 2)
    torch.testing.assert_close(pred, expected)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    imgs = torch.randn(3, 3, 32, 32).cumsum(dim=-1) / 4  # smooth along rows: something to predict
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(1))
    return imgs, noise


def test_heldout_loss_is_the_models_own_loss_and_the_mode_is_restored(batch):
    imgs, noise = batch
    torch.manual_seed(0)
    model = create_model("mae_vit_test").train()
    scores = heldout_scores(model, imgs, noise)
    assert model.training
    model.eval()
    with torch.no_grad():
        loss, pred, mask = model(imgs, noise=noise)
    assert scores.loss == pytest.approx(float(loss), rel=1e-6)
    target = model.patchify(imgs)
    baseline = MF.masked_mse_loss(mean_colour_prediction(target, mask, 3), target, mask)
    assert scores.baseline == pytest.approx(float(baseline), rel=1e-6)
    assert scores.ratio == pytest.approx(scores.loss / scores.baseline)


def test_norm_pix_prediction_is_scored_after_denormalising_with_the_true_patch_statistics(batch):
    imgs, noise = batch
    model = create_model("mae_vit_test", norm_pix_loss=True)
    with torch.no_grad():  # predict 0 everywhere: de-normalised, that is each patch's own true mean
        model.decoder_pred.weight.zero_()
        model.decoder_pred.bias.zero_()
    scores = heldout_scores(model, imgs, noise)
    target = model.patchify(imgs)
    mask = MF.random_masking(torch.zeros(3, 16, 1), model.config.mask_ratio, noise=noise).mask  # (B, L)
    patch_means = target.mean(dim=-1, keepdim=True).expand_as(target)
    assert scores.loss == pytest.approx(float(MF.masked_mse_loss(patch_means, target, mask)), rel=1e-5)
    # Knowing each removed patch's true mean beats the image's mean colour: the help the caveat is about.
    assert scores.loss < scores.baseline


def test_heldout_batch_is_the_training_augmentation_of_the_held_out_photos_with_a_fixed_seed():
    spec = MaskingSpec(16)
    imgs, noise = heldout_batch(32, spec, num_images=3)
    assert imgs.shape == (3, 3, 32, 32) and imgs.dtype == torch.float32 and noise.shape == (3, 16)
    again = heldout_batch(32, spec, num_images=3)
    assert torch.equal(imgs, again[0]) and torch.equal(noise, again[1])
    assert not torch.equal(imgs[0], imgs[2])  # different crops of the same photograph
    # sample i is the new pipeline's training sample i of the held-out photographs (taken in turn), normalised
    photos = skimage_photos(("chelsea", "coffee"))
    for i in range(3):
        pixels, sample_noise = augment_sample(*photos[i % 2], size=32, noise=spec, seed=HELDOUT_SEED, epoch=0,
                                              index=i)
        torch.testing.assert_close(imgs[i], normalize_on_device(pixels[None], IMAGENET_MEAN, IMAGENET_STD)[0])
        assert torch.equal(noise[i], sample_noise)


def test_heldout_batch_follows_the_masking_strategy():
    spec = MaskingSpec(16, "grid", (4, 4), 0.75)
    noise = heldout_batch(32, spec, num_images=2)[1]
    kept = MF.random_masking(torch.zeros(2, 16, 1), 0.75, noise=noise).mask == 0  # (N, L)
    # grid masking keeps one patch of every 2x2 cell
    assert kept.view(2, 2, 2, 2, 2).sum(dim=(2, 4)).eq(1).all()
