"""Fuzzing the public entry points (``create_model``, ``MAEConfig``, ``MaskedAutoEncoder`` and its methods, the
functions of ``mae.functional``, ``mae.visualize``): every argument gets good and bad values (wrong types, NaN/inf,
zero, negative, absurd sizes, NumPy scalars, strings for booleans, tensors of the wrong shape, dtype or device).

Internal layers (``Attention``, ``Block``, ``Mlp``, ``PatchEmbedding``) trust their inputs and are not fuzzed.

The contract: valid arguments work; anything else raises ValueError, TypeError or FileNotFoundError whose
message names the offending argument -- never a torch-internal RuntimeError, an AttributeError, a KeyError, an
IndexError, a ZeroDivisionError, a hang or a huge allocation. Each example picks up to two arguments to spoil and
draws good values for the rest, so both the accepting and the refusing side are exercised.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mae.functional as MF
from mae import MAEConfig, MaskedAutoEncoder, create_model
from mae._checks import (
    available_bytes,
    check_bool,
    check_finite,
    check_fits,
    check_mask_ratio,
    check_positive_int,
    to_pair,
)
from mae.train.data.shards import MANIFEST_FORMAT, MAX_SHARD_NAMES, expand_braces, resolve_shards

ACCEPTED = (ValueError, TypeError, FileNotFoundError)
HUGE = 2**40  # a size no machine holds: must be refused before anything is allocated
FUZZ = settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])

# Pools of bad values shared by many arguments.
NOT_INT = [None, "8", 8.0, 2.5, True, False, math.nan, math.inf, [8], torch.tensor(8), np.float64(8.0), 1j]
NOT_POSITIVE_INT = [*NOT_INT, 0, -1, -HUGE]
NOT_BOOL = ["false", "False", "true", "", 0, 1, 1.0, None, np.int64(1), torch.tensor(True), [True]]
NOT_RATIO = [None, 1.0, -0.1, math.nan, math.inf, -math.inf, "0.75", True, [0.75], torch.tensor(0.5), 75, 1j]
GOOD_RATIO = [0.75, 0.5, np.float32(0.75), np.float64(0.6)]
BAD_GENERATOR = [0, 1, "0", True, 3.5, np.random.default_rng(0), torch.tensor(0), [torch.Generator()]]
BAD_DEVICE = ["foo", "cuda:99", "cpu:x", "", 3.5, True, [0], {"type": "cpu"}]
BAD_DTYPE = ["float16", "torch.float32", torch.int64, torch.bool, torch.complex64, np.float32, float, 16]
NOT_TENSOR = ["x", 3, 3.0, [[0.0, 1.0]], np.zeros((2, 16), dtype=np.float32)]  # and None where it is not optional


def spec(good: list, bad: list) -> tuple[list, list]:
    return good, bad


@st.composite
def arguments(draw, specs: dict[str, tuple[list, list]], max_bad: int = 2) -> tuple[dict, set]:
    """Keyword arguments with up to ``max_bad`` of them drawn from their bad pool: (kwargs, names of the bad ones)."""
    bad = draw(st.sets(st.sampled_from(sorted(specs)), max_size=max_bad))
    return {name: draw(st.sampled_from(specs[name][name in bad])) for name in specs}, bad


SWEEP: list[tuple[object, dict, tuple]] = []  # (fn, specs, positional args) for the exhaustive sweep below


def fuzz(fn, specs: dict, max_bad: int = 2, args: tuple = ()):
    """The ``arguments`` strategy for ``fn``, which is also registered for ``test_every_bad_value_alone``."""
    SWEEP.append((fn, specs, args))
    return arguments(specs, max_bad)


def check_call(fn, kwargs: dict, bad: set, *args):
    """Call ``fn``; good arguments must work, bad ones must raise an accepted error naming one of them."""
    try:
        out = fn(*args, **kwargs)
    except ACCEPTED as err:
        assert bad, f"valid arguments refused: {err!r}\n{kwargs}"
        named = [n for n in bad if re.search(rf"(?<!\w){n}(?!\w)", str(err))]  # "mask" is not "mask_ratio"
        assert named, f"{err!r} names none of the bad arguments {sorted(bad)}"
        return None
    assert not bad, f"bad argument(s) {sorted(bad)} accepted: { {n: kwargs[n] for n in bad} }"
    return out


# ---------------------------------------------------------------------------------------------- shared checks

ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.binary(max_size=3),
    st.complex_numbers(), st.lists(st.integers(-3, 70), max_size=3), st.tuples(st.integers(), st.floats()),
    st.sampled_from([np.int64(8), np.float32(0.5), np.bool_(True), torch.tensor(1.0), torch.tensor([8, 8])]),
)


@FUZZ
@given(value=ANYTHING)
def test_shared_checks_return_or_refuse_by_name(value):
    for check in (to_pair, check_positive_int, check_bool, check_finite, check_mask_ratio):
        try:
            check(value, "the_arg")
        except ACCEPTED as err:
            assert "the_arg" in str(err), err


def test_shared_checks_canonical_forms():
    assert to_pair(np.int64(4), "p") == (4, 4) and to_pair([2, 3], "p") == (2, 3)
    assert check_positive_int(np.uint8(3), "n") == 3 and type(check_positive_int(np.int64(3), "n")) is int
    assert check_bool(np.bool_(False), "b") is False
    assert check_mask_ratio(np.float32(0.75)) == 0.75
    with pytest.raises(ValueError, match="the_arg must be in"):
        check_finite(2.0, "the_arg", high=1.0)


def test_check_fits_bounds_real_devices_only():
    free = available_bytes(None)
    assert free is None or 0 < free < 2**62
    with pytest.raises(ValueError, match="the thing needs .* GiB but only .* GiB is free"):
        check_fits(2**62, "the thing", None)
    check_fits(2**62, "the thing", torch.device("meta"))  # meta allocates nothing
    check_fits(1, "the thing", "cpu")


# ---------------------------------------------------------------------------------------------- config / presets

CONFIG = {
    "img_size": spec([32, (32, 32), [32, 32], np.int64(32), (32, 64), HUGE],
                     [*NOT_POSITIVE_INT, (32,), (32, 32, 32), (32.0, 32.0), (True, 32), 33, (32, 30)]),
    "patch_size": spec([8, (8, 8), np.int32(8), (8, 4), 16], [*NOT_POSITIVE_INT, 5, (8,), (3, 8), "8x8"]),
    "in_chans": spec([1, 3, 4, np.int16(2), HUGE], NOT_POSITIVE_INT),
    "embed_dim": spec([64, 32, np.int64(128), 2**30], [*NOT_POSITIVE_INT, 66, 62]),
    "depth": spec([1, 2, np.uint8(3), HUGE], NOT_POSITIVE_INT),
    "num_heads": spec([1, 2, 4, 8], [*NOT_POSITIVE_INT, 3]),
    "decoder_embed_dim": spec([32, 16, 64], [*NOT_POSITIVE_INT, 30]),
    "decoder_depth": spec([1, 2], NOT_POSITIVE_INT),
    "decoder_num_heads": spec([1, 2, 4], [*NOT_POSITIVE_INT, 3]),
    "mlp_ratio": spec([4.0, 2, np.float32(1.5), 0.5], [math.nan, math.inf, -1.0, 0, "4", None, True, 1e-9, 0.01, 1j]),
    "norm_pix_loss": spec([True, False, np.bool_(True)], NOT_BOOL),
    "mask_ratio": spec([*GOOD_RATIO, 0.0], NOT_RATIO),
    "masking": spec(["random", "block"], ["Random", "", None, 3, ["random"], b"random", "grid "]),
}


@FUZZ
@given(args=fuzz(MAEConfig, CONFIG))
def test_config_fields(args):
    """MAEConfig validates every field; absurd but well-formed sizes are fine here (nothing is allocated)."""
    kwargs, bad = args
    cfg = check_call(MAEConfig, kwargs, bad)
    if cfg is not None:
        assert MAEConfig(**cfg.to_dict()) == cfg
        assert cfg.replace() == cfg


@FUZZ
@given(args=fuzz(create_model, {
    "name": spec(["mae_vit_test"], [None, 3, ["mae_vit_test"], "mae_vit_tset", "", b"mae_vit_test", ("a",)]),
    "device": spec([None, "cpu", torch.device("cpu"), "meta"], BAD_DEVICE),
    "dtype": spec([None, torch.float32, torch.float64, torch.bfloat16], BAD_DTYPE),
    "mask_ratio": spec(GOOD_RATIO, NOT_RATIO),
}))
def test_create_model_arguments(args):
    kwargs, bad = args
    model = check_call(create_model, kwargs, bad)
    if model is not None:
        assert model.config.num_params == sum(p.numel() for p in model.parameters())


SWEEP.append((MAEConfig.from_name, CONFIG, ("mae_vit_test",)))
SWEEP.append((create_model, {**CONFIG, "device": spec(["meta", None], BAD_DEVICE)}, ("mae_vit_test",)))


def test_unknown_override_is_named():
    with pytest.raises(TypeError, match="imgsize"):
        create_model("mae_vit_test", imgsize=32)
    with pytest.raises(TypeError, match="name must be a str"):
        MAEConfig.from_name(["mae_vit_test"])


@pytest.mark.parametrize("field, value", [
    ("img_size", HUGE), ("embed_dim", 2**20), ("depth", 10**9), ("in_chans", 10**9),
    ("decoder_embed_dim", 2**20), ("decoder_depth", 10**9), ("mlp_ratio", 1e9),
])
def test_absurd_sizes_are_refused_before_allocating(field, value):
    """A model that cannot fit is refused by estimate, in microseconds, naming the sizes; 'meta' still builds it
    wherever only its parameters would be too big."""
    overrides = {field: value}
    with pytest.raises(ValueError, match=f"{field}=.*needs .* GiB but only .* GiB is free"):
        create_model("mae_vit_test", **overrides)
    if field in ("embed_dim", "decoder_embed_dim", "in_chans", "mlp_ratio"):
        meta = create_model("mae_vit_test", device="meta", **overrides)
        assert meta.config.num_params == sum(p.numel() for p in meta.parameters())
    else:  # the sin-cos tables or the blocks' Python objects live on the host, even for 'meta'
        with pytest.raises(ValueError, match=f"{field}="):
            create_model("mae_vit_test", device="meta", **overrides)


def test_paper_presets_build_on_meta_for_free():
    for name in ("mae_vit_large_patch16", "mae_vit_huge_patch14"):
        model = create_model(name, device="meta", img_size=448)
        assert model.config.num_params == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- model calls

torch.manual_seed(0)
MODEL = MaskedAutoEncoder(**TINY)
IMGS = torch.randn(2, 3, 32, 32)
L = MODEL.config.num_patches


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


BAD_IMGS = [
    *NOT_TENSOR, IMGS.numpy(), IMGS.long(), IMGS.bool(), IMGS[0], IMGS[None], IMGS[:0], IMGS[:, :1], IMGS[..., :16],
    IMGS.double(), torch.empty(2, 3, 32, 32, device="meta"), torch.randn(2, 3, 32, 33),
]
MASKING_ARGS = {
    "imgs": spec([IMGS], [None, *BAD_IMGS]),
    "mask_ratio": spec([None, *GOOD_RATIO], [*NOT_RATIO[1:], 0.99]),  # 0.99 keeps int(16 * 0.01) = 0 patches
    "noise": spec([None, torch.rand(2, L), torch.randint(0, 9, (2, L))],
                  [*NOT_TENSOR, torch.rand(2, L - 1), torch.rand(3, L), torch.rand(L), torch.rand(2, L, 1),
                   torch.rand(2, L, dtype=torch.complex64), torch.zeros(2, L, dtype=torch.bool),
                   torch.rand(2, L, device="meta")]),
    "generator": spec([None, gen(0)], BAD_GENERATOR),
    "masking": spec([None, "random", "block"], ["Random", "", 3, ["random"], b"block", "grid "]),
}


@FUZZ
@given(args=fuzz(MODEL, {**MASKING_ARGS, "loss_only": spec([False, True, np.bool_(True)], NOT_BOOL)}))
def test_forward_arguments(args):
    kwargs, bad = args
    out = check_call(MODEL, kwargs, bad)
    if out is not None:
        assert torch.isfinite(out.loss) and out.mask.shape == (2, L)
        assert (out.pred is None) == bool(kwargs["loss_only"])


@FUZZ
@given(args=fuzz(MODEL.encoder, {**MASKING_ARGS, "mask_ratio": spec([None, 0.0, *GOOD_RATIO], [*NOT_RATIO[1:], 0.99])}))
def test_encoder_arguments(args):
    kwargs, bad = args
    out = check_call(MODEL.encoder, kwargs, bad)
    if out is not None:
        assert out.latent.shape[0] == 2 and out.ids_restore.dtype == torch.long


@FUZZ
@given(args=fuzz(MODEL.forward_features, {"imgs": spec([IMGS], BAD_IMGS)}))
def test_forward_features_and_patchify(args):
    kwargs, bad = args
    out = check_call(MODEL.forward_features, kwargs, bad)
    if out is not None:
        assert out.shape == (2, 1 + L, 64)


def row_mask(removed: int, batch: int = 2) -> torch.Tensor:
    return torch.stack([torch.randperm(L, generator=gen(b)) < removed for b in range(batch)]).float()


@FUZZ
@given(args=fuzz(MODEL, {
    "mask": spec([row_mask(12), row_mask(8), row_mask(1).bool(), row_mask(15).double()],
                 [*NOT_TENSOR, row_mask(0), row_mask(16), row_mask(12) * 2, row_mask(12)[:, :-1], row_mask(12, 3),
                  torch.stack([row_mask(12)[0], row_mask(11)[1]]), row_mask(12).to("meta"),
                  row_mask(12).fill_(math.nan)]),
    "generator": spec([None, gen(1)], BAD_GENERATOR),
}, max_bad=1, args=(IMGS,)))
def test_user_mask(args):
    kwargs, bad = args
    out = check_call(MODEL, kwargs, bad, IMGS)
    if out is not None:
        assert torch.equal(out.mask, kwargs["mask"].float())


@pytest.mark.parametrize("extra", [{"mask_ratio": 0.5}, {"noise": torch.rand(2, L)}, {"masking": "block"}])
def test_user_mask_goes_alone(extra):
    with pytest.raises(ValueError, match="pass mask alone"):
        MODEL(IMGS, mask=row_mask(12), **extra)


LATENT, _, IDS = MODEL.encoder(IMGS, generator=gen(2))
REMOVED = MF.shuffle_order(IDS)[:, LATENT.shape[1] - 1:]


@FUZZ
@given(args=fuzz(MODEL.decoder, {
    "latent": spec([LATENT], [None, *NOT_TENSOR, LATENT[0], LATENT[..., :-1], LATENT[:, :0], LATENT[:, :, None]]),
    "ids_restore": spec([IDS], [None, *NOT_TENSOR, IDS.float(), IDS[:1], IDS[:, :-1], IDS + L, IDS - 1,
                                IDS.to("meta"), IDS.int()]),
    "patches": spec([None, REMOVED, REMOVED[:, :3]],
                    [*NOT_TENSOR, REMOVED.float(), REMOVED[0], REMOVED[:1], REMOVED + L, torch.zeros(2, L + 1).long()]),
}))
def test_decoder_arguments(args):
    kwargs, bad = args
    out = check_call(MODEL.decoder, kwargs, bad)
    if out is not None:
        M = L if kwargs["patches"] is None else kwargs["patches"].shape[1]
        assert out.shape == (2, M, MODEL.config.patch_dim)


PRED = MODEL.decoder(LATENT, IDS)
MASK = MODEL.encoder(IMGS, generator=gen(2)).mask


@FUZZ
@given(args=fuzz(MODEL.loss, {
    "imgs": spec([IMGS], [None, *BAD_IMGS]),
    "pred": spec([PRED], [None, *NOT_TENSOR, PRED[0], PRED[..., :-1], PRED.long(), PRED.to(torch.complex64)]),
    "mask": spec([MASK], [None, *NOT_TENSOR, MASK[0], MASK[:, :-1], torch.zeros_like(MASK), MASK.to("meta")]),
}))
def test_loss_arguments(args):
    kwargs, bad = args
    out = check_call(MODEL.loss, kwargs, bad)
    if out is not None:
        assert out.ndim == 0 and torch.isfinite(out)


# ---------------------------------------------------------------------------------------------- functional

PATCHES = MF.patchify(IMGS, 8)


@FUZZ
@given(args=fuzz(MF.patchify, {
    "imgs": spec([IMGS, IMGS.double(), IMGS.long()], [None, *NOT_TENSOR, IMGS[0], IMGS[None], IMGS[..., :30]]),
    "patch_size": spec([8, (4, 8), np.int64(2), 32], [*NOT_POSITIVE_INT, 5, (8,), (8, 8, 8), HUGE]),
}))
def test_patchify(args):
    kwargs, bad = args
    out = check_call(MF.patchify, kwargs, bad)
    if out is not None:
        assert out.numel() == kwargs["imgs"].numel()


@FUZZ
@given(args=fuzz(MF.unpatchify, {
    "x": spec([PATCHES], [None, *NOT_TENSOR, PATCHES[0], PATCHES[:, :-1], PATCHES[..., :-1]]),
    "patch_size": spec([8, (8, 8)], [*NOT_POSITIVE_INT, 4, HUGE]),
    "grid_size": spec([4, (4, 4), [4, 4]], [*NOT_POSITIVE_INT, 3, (2, 8, 1), HUGE]),
    "in_chans": spec([3, np.int64(3)], [*NOT_POSITIVE_INT, 1, HUGE]),
}))
def test_unpatchify(args):
    kwargs, bad = args
    out = check_call(MF.unpatchify, kwargs, bad)
    if out is not None:
        assert torch.equal(out, IMGS)


@FUZZ
@given(args=fuzz(MF.random_masking, {
    "x": spec([PATCHES, PATCHES.double(), PATCHES[:, :, :5]], [None, *NOT_TENSOR, PATCHES[0], IMGS]),
    "mask_ratio": spec([0.0, *GOOD_RATIO], NOT_RATIO),
    "noise": MASKING_ARGS["noise"],
    "generator": spec([None, gen(3)], BAD_GENERATOR),
}))
def test_random_masking(args):
    kwargs, bad = args
    out = check_call(MF.random_masking, kwargs, bad)
    if out is not None:
        K = MF.num_kept(L, kwargs["mask_ratio"])
        assert out.x_kept.shape[1] == K and int(out.mask.sum()) == 2 * (L - K)


STRATEGY = {
    "batch_size": spec([1, 3, np.int64(2)], [*NOT_POSITIVE_INT, HUGE]),
    "grid_size": spec([4, (4, 6), (2, 2)], [*NOT_POSITIVE_INT, (4,), (HUGE, HUGE)]),
    "generator": spec([None, gen(4)], BAD_GENERATOR),
    "device": spec([None, "cpu", torch.device("cpu")], BAD_DEVICE),
}


@FUZZ
@given(args=fuzz(MF.block_mask, {**STRATEGY, "mask_ratio": spec([0.0, *GOOD_RATIO], NOT_RATIO)}))
def test_block_mask(args):
    kwargs, bad = args
    out = check_call(MF.block_mask, kwargs, bad)
    if out is not None:
        n = out.shape[1]
        assert bool((out.sum(1) == n - MF.num_kept(n, kwargs["mask_ratio"])).all())


@FUZZ
@given(args=fuzz(MF.grid_mask, {
    **STRATEGY,
    "mask_ratio": spec([0.75, np.float32(0.75)], [*NOT_RATIO, 0.5]),
    "offset": spec([None, (0, 1), [1, 1]], [(2, 0), (0,), "00", np.array([0, 1]), 0, (0.0, 1.0)]),
}))
def test_grid_mask(args):
    kwargs, bad = args
    out = check_call(MF.grid_mask, kwargs, bad)
    if out is not None:
        assert bool((out.sum(1) == out.shape[1] * 3 // 4).all())


@FUZZ
@given(args=fuzz(MF.mask_to_noise, {
    "mask": spec([row_mask(12), row_mask(0), row_mask(16).bool()],
                 [None, *NOT_TENSOR, row_mask(12) * 2, row_mask(12)[0], row_mask(12).to("meta"),
                  torch.stack([row_mask(12)[0], row_mask(11)[1]])]),
    "generator": spec([None, gen(5)], BAD_GENERATOR),
}))
def test_check_mask_and_mask_to_noise(args):
    kwargs, bad = args
    noise = check_call(MF.mask_to_noise, kwargs, bad)
    if noise is not None:
        removed = MF.check_mask(kwargs["mask"], 2, L)
        x = MF.random_masking(PATCHES, MF.mask_ratio_for(L, removed), noise=noise) if removed < L else None
        assert x is None or torch.equal(x.mask, kwargs["mask"].float())


@FUZZ
@given(args=fuzz(MF.check_mask, args=(row_mask(5),), specs={
    "batch_size": spec([None, 2], [*NOT_INT[1:], 0, -2, 3]),  # (None is the default: any batch size)
    "num_patches": spec([None, L], [*NOT_INT[1:], 0, L + 1]),
}))
def test_check_mask_sizes(args):
    kwargs, bad = args
    assert check_call(MF.check_mask, kwargs, bad, row_mask(5)) in (None, 5)


@FUZZ
@given(args=fuzz(MF.sincos_pos_embed_2d, {
    "embed_dim": spec([4, 64, np.int64(32)], [*NOT_POSITIVE_INT, 6, 2**40]),
    "grid_size": spec([4, (2, 3), [1, 1]], [*NOT_POSITIVE_INT, (4,), HUGE]),
    "cls_token": spec([True, False, np.bool_(False)], NOT_BOOL),
}))
def test_sincos_pos_embed_2d(args):
    kwargs, bad = args
    out = check_call(MF.sincos_pos_embed_2d, kwargs, bad)
    if out is not None:
        gh, gw = to_pair(kwargs["grid_size"], "grid_size")
        assert out.shape == (gh * gw + bool(kwargs["cls_token"]), kwargs["embed_dim"])


TARGET = MF.patchify(IMGS, 8)


@FUZZ
@given(args=fuzz(MF.masked_mse_loss, {
    "pred": spec([PRED, PRED.double()], [None, *NOT_TENSOR, PRED[0], PRED.long(), PRED.to("meta"), PRED[:, :, :1]]),
    "target": spec([TARGET], [None, *NOT_TENSOR, TARGET[:, :, :1], TARGET[:1], TARGET.bool(), TARGET.to("meta")]),
    "mask": spec([MASK, MASK.bool()], [None, *NOT_TENSOR, MASK[0], torch.zeros_like(MASK), MASK[:, :, None]]),
    "norm_pix_loss": spec([True, False], NOT_BOOL),
}))
def test_masked_mse_loss(args):
    kwargs, bad = args
    out = check_call(MF.masked_mse_loss, kwargs, bad)
    if out is not None:
        assert out.ndim == 0 and torch.isfinite(out)


@FUZZ
@given(args=fuzz(MF.num_kept, {"num_patches": spec([16, np.int64(4)], NOT_POSITIVE_INT),
                       "mask_ratio": spec([0.0, *GOOD_RATIO], NOT_RATIO)}))
def test_num_kept(args):
    kwargs, bad = args
    out = check_call(MF.num_kept, kwargs, bad)
    assert out is None or 0 <= out <= kwargs["num_patches"]


@pytest.mark.parametrize("index", range(len(SWEEP)))
def test_every_bad_value_alone(index):
    """Each bad value of each argument of each entry point above, with every other argument good (the hypothesis
    tests draw combinations, but only some of the values)."""
    fn, specs, args = SWEEP[index]
    good = {name: values[0] for name, (values, _) in specs.items()}
    check_call(fn, good, set(), *args)
    for name, (_, bad_values) in specs.items():
        for value in bad_values:
            check_call(fn, {**good, name: value}, {name}, *args)


# ---------------------------------------------------------------------------------------------- mae.visualize

visualize = pytest.importorskip("mae.visualize")
BAD_MODEL = [None, "mae_vit_test", torch.nn.Linear(2, 2), {"model": MODEL}, MAEConfig()]


@FUZZ
@given(args=fuzz(visualize.reconstruct, {
    "model": spec([MODEL], BAD_MODEL),
    "imgs": spec([IMGS], [None, *BAD_IMGS]),
    "mask_ratio": MASKING_ARGS["mask_ratio"],
    "noise": MASKING_ARGS["noise"],
    "generator": MASKING_ARGS["generator"],
}))
def test_reconstruct(args):
    kwargs, bad = args
    out = check_call(visualize.reconstruct, kwargs, bad)
    if out is not None:
        assert out.pasted.shape == IMGS.shape and MODEL.training


def test_reconstruction_figure_arguments(tmp_path):
    """Each bad display argument alone (figures are slow to draw: a loop over values, not hypothesis examples)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    specs = {
        "mean": spec([None], [[0.5], "0.5", [math.nan] * 3, torch.zeros(2, 3)]),
        "max_images": spec([1], NOT_POSITIVE_INT),
        "path": spec([None], [3, blocker / "fig.png", tmp_path, b"x" * 3]),
        "title": spec([None], [3, ["a"], b"title"]),
        "dpi": spec([20], NOT_POSITIVE_INT),
    }
    good = {name: values[0] for name, (values, _) in specs.items()}
    fig = check_call(visualize.reconstruction_figure, good, set(), MODEL, IMGS)
    assert len(fig.axes) == 4
    for name, (_, bad_values) in specs.items():
        for value in bad_values:
            extra = {"std": [0.2] * 3} if name == "mean" else {}
            check_call(visualize.reconstruction_figure, {**good, **extra, name: value}, {name}, MODEL, IMGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing half-written left behind


def test_loss_curve_figure_arguments(tmp_path):
    specs = {
        "steps": spec([[1, 2, 3]], [None, "abc", [[1, 2, 3]], [1, 2], {"a": 1}]),
        "losses": spec([np.array([3.0, 2.0, 1.0])], [None, ["a", "b", "c"], [math.nan] * 3, torch.zeros(3, 1)]),
        "path": spec([None, tmp_path / "curve.png"], [3, tmp_path / "curve.png" / "x.png", tmp_path]),
        "title": spec(["loss"], [None, 3, ["a"]]),
        "log_y": spec([True, False], NOT_BOOL),
        "dpi": spec([20], NOT_POSITIVE_INT),
    }
    good = {name: values[0] for name, (values, _) in specs.items()}
    check_call(visualize.loss_curve_figure, {**good, "path": tmp_path / "curve.png"}, set())
    for name, (_, bad_values) in specs.items():
        for value in bad_values:
            check_call(visualize.loss_curve_figure, {**good, name: value}, {name})


# ---------------------------------------------------------------------------------------------- shard manifests

JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
SHARD_BYTES = b"\0" * 1024  # an empty tar: the reader only checks names, sizes and checksums here


def good_manifest() -> dict:
    return {"format": MANIFEST_FORMAT, "version": 1, "shards": [
        {"name": "shard-000000.tar", "count": 1, "size": len(SHARD_BYTES), "sha256": "0" * 64}]}


@st.composite
def manifests(draw) -> object:
    """A good manifest with one key spoiled (replaced by any JSON value, or removed), or any JSON value at all."""
    manifest = good_manifest()
    where = draw(st.sampled_from(["top", "entry", "anything"]))
    if where == "anything":
        return draw(JSON_VALUE)
    target = manifest if where == "top" else manifest["shards"][0]
    key = draw(st.sampled_from(sorted(target)))
    if draw(st.booleans()):
        del target[key]
    else:
        target[key] = draw(JSON_VALUE)
    return manifest


@FUZZ
@given(content=manifests())
def test_manifest_reader_names_what_is_wrong(content):
    """Any manifest content: read, or a ValueError/FileNotFoundError naming the manifest or the shard, never a
    KeyError, IndexError or TypeError from inside the reader."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "shard-000000.tar").write_bytes(SHARD_BYTES)
        (Path(folder) / "manifest.json").write_text(json.dumps(content))
        try:
            paths, manifest = resolve_shards(folder)
        except (ValueError, FileNotFoundError) as err:
            assert "manifest.json" in str(err) or "shard" in str(err), err
            assert "\n" not in str(err)
        else:
            assert [p.name for p in paths] == ["shard-000000.tar"] and manifest == content


@FUZZ
@given(pattern=st.text(alphabet="{}.,0123456789a", max_size=40)
       | st.sampled_from(["s-{0..99999999}.tar", "{0..9}" * 9, "{a,b}" * 30, "{0..99999}{0..99999}"]))
def test_brace_patterns_expand_or_are_refused_quickly(pattern):
    start = time.perf_counter()
    try:
        names = expand_braces(pattern)
    except ValueError as err:
        assert "--data" in str(err)
    else:
        assert 1 <= len(names) <= MAX_SHARD_NAMES
    assert time.perf_counter() - start < 5
