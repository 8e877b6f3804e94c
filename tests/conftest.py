"""Shared test helpers: tiny configs, a deterministic model factory, and CUDA / hypothesis settings.

Every test builds tiny models (img 32, patch 8, width 64, depth 2) so the whole suite runs in about a minute on two
CPU cores. Nothing here downloads anything.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from mae import MAEConfig, MaskedAutoEncoder

# Deterministic property tests: the same examples every run, no example database written to the repository,
# and no per-example deadline (a shared CI machine is noisy).
settings.register_profile("mae", derandomize=True, deadline=None, database=None, print_blob=True)
settings.load_profile("mae")

HAS_CUDA = torch.cuda.is_available()

# Tiny tensors gain nothing from intra-op threads, and on a shared CPU the threads' barriers stall: a 95-step tiny
# training loop measured 1.2 s with one thread against 25-41 s with two on a loaded 2-core machine. One thread
# unless the caller chose a number through OMP_NUM_THREADS.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


TINY = MAEConfig.from_name("mae_vit_test").to_dict()  # the registered test preset: 32 px, patch 8, 64 wide


def tiny_model(seed: int = 0, **overrides) -> MaskedAutoEncoder:
    """A tiny MAE with reproducible weights; ``overrides`` change any constructor argument."""
    torch.manual_seed(seed)
    return MaskedAutoEncoder(**{**TINY, **overrides})


def images_for(model: MaskedAutoEncoder, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random normalised images (B, C, H, W) matching ``model``'s config, dtype and device."""
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    imgs = torch.randn(batch, cfg.in_chans, *cfg.img_size, generator=gen, dtype=torch.float64)
    return imgs.to(device=model.device, dtype=model.cls_token.dtype)


def noise_for(model: MaskedAutoEncoder, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Masking noise (B, L) on the model's device."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, model.config.num_patches, generator=gen).to(model.device)


@pytest.fixture
def model() -> MaskedAutoEncoder:
    return tiny_model()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped (with a reason) on machines without a CUDA GPU."""
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
