"""Feature extraction (pooled, intermediate, attention maps) and the fine-tuning model against our encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import images_for, tiny_model

from mae.eval import attention_maps, build_finetune_model, cls_attention, intermediate_layers, pooled_features


@pytest.fixture
def model():
    return tiny_model(seed=3).eval()


def test_pooled_features_are_cls_or_mean_of_forward_features(model):
    imgs = images_for(model, batch=3)
    tokens = model.forward_features(imgs)  # (B, 1+L, D)
    torch.testing.assert_close(pooled_features(model, imgs, "cls"), tokens[:, 0])
    torch.testing.assert_close(pooled_features(model, imgs, "mean"), tokens[:, 1:].mean(1))
    with pytest.raises(ValueError, match="pool must be one of"):
        pooled_features(model, imgs, "max")


def test_intermediate_layers_end_at_forward_features(model):
    imgs = images_for(model, batch=2)
    outs = intermediate_layers(model, imgs, 2)
    assert len(outs) == 2 and all(o.shape == (2, 17, 64) for o in outs)
    torch.testing.assert_close(outs[-1], model.forward_features(imgs))
    torch.testing.assert_close(intermediate_layers(model, imgs, [-1])[0], outs[-1])
    assert not torch.allclose(outs[0], outs[1])
    with pytest.raises(ValueError, match="the encoder has 2"):
        intermediate_layers(model, imgs, 3)
    with pytest.raises(ValueError, match="block indices"):
        intermediate_layers(model, imgs, [5])


def test_attention_maps_reproduce_the_last_blocks_attention(model):
    imgs = images_for(model, batch=2)
    maps = attention_maps(model, imgs)  # (B, h, N, N)
    assert maps.shape == (2, 4, 17, 17)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, 17))
    # The maps applied to the block's values, through its output projection, give the block's attention output.
    x = intermediate_layers(model, imgs, [0], norm=False)[0]  # input of the last block (depth 2)
    last = model.blocks[-1]
    h = last.norm1(x)
    v = last.attn.qkv(h).reshape(2, 17, 3, 4, 16)[:, :, 2].transpose(1, 2)  # (B, h, N, d)
    out = last.attn.proj((maps @ v).transpose(1, 2).reshape(2, 17, 64))
    torch.testing.assert_close(out, last.attn(h), rtol=1e-4, atol=1e-5)
    cls = cls_attention(model, imgs)
    assert cls.shape == (2, 4, 4, 4)
    torch.testing.assert_close(cls.flatten(2), maps[:, :, 0, 1:])


def test_finetune_model_features_equal_ours_before_training(model):
    imgs = images_for(model, batch=2)
    vit = build_finetune_model(model, num_classes=5, drop_path=0.1).eval()
    ours = intermediate_layers(model, imgs, 1, norm=False)[0]  # block outputs; fine-tuning drops the final norm
    with torch.no_grad():
        theirs = vit.forward_features(imgs)
        pre_logits = vit.forward_head(theirs, pre_logits=True)
        logits = vit(imgs)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    # Average of the patch tokens (cls excluded) through a fresh LayerNorm (identity at initialisation).
    torch.testing.assert_close(pre_logits, F.layer_norm(ours[:, 1:].mean(1), (64,), eps=1e-6), rtol=1e-5, atol=1e-5)
    assert logits.shape == (2, 5)
    assert vit.head.weight.std() < 1e-4  # trunc-normal std 2e-5
    assert sorted(n for n, _ in vit.named_parameters() if not n.startswith("blocks.")) == [
        "cls_token", "fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight", "patch_embed.proj.bias",
        "patch_embed.proj.weight", "pos_embed"]
