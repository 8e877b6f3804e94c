"""torch.hub entry points: one per preset, built locally; weights only from a file you already have.

    >>> model = torch.hub.load("path/to/mae-pytorch", "mae_vit_base_patch16", source="local")
    >>> model = torch.hub.load("path/to/mae-pytorch", "mae_vit_large_patch16", source="local",
    ...                        pretrained="mae_visualize_vit_large.pth")

Nothing is ever downloaded. ``pretrained`` (alias ``checkpoint``) takes any checkpoint
``mae.from_pretrained`` reads, loaded into the named preset (plus keyword arguments: ``MAEConfig``
fields, ``device``, ``dtype``); position tables follow ``img_size`` if it differs from the file's.
"""

from __future__ import annotations

from typing import Any as _Any

dependencies = ["torch", "timm", "einops", "numpy", "safetensors"]


def _make_entry(name: str):  # noqa: ANN202 - returns the entry point function
    def entry(pretrained: _Any = None, *, checkpoint: _Any = None, **kwargs: _Any):  # noqa: ANN202
        from mae import create_model
        from mae.io import load_checkpoint

        if pretrained is not None and checkpoint is not None:
            raise ValueError("pass the checkpoint path as pretrained= or checkpoint=, not both")
        path = checkpoint if checkpoint is not None else pretrained
        if path is True:
            raise ValueError(
                f"pretrained=True would need a download, which this hub never does; pass the path of a checkpoint "
                f"you have, e.g. {name}(pretrained='mae_pretrain_vit_base.pth')"
            )
        model = create_model(name, **kwargs)
        if path is not None and path is not False:
            # The preset (plus kwargs) fixes the architecture; the file must fit it (shape errors say where not).
            load_checkpoint(model, path).warn_if_partial()
        return model

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"{name}: an MAE built from the preset of that name (mae.create_model).\n\n"
        "Args:\n"
        "    pretrained: path to a local checkpoint (official .pth, our directory, Hugging Face ViTMAE directory);\n"
        "        None builds the model freshly initialised. Never downloads.\n"
        "    checkpoint: alias of pretrained.\n"
        "    **kwargs: MAEConfig fields (img_size, norm_pix_loss, ...) and device/dtype.\n"
    )
    return entry


mae_vit_base_patch16 = _make_entry("mae_vit_base_patch16")
mae_vit_large_patch16 = _make_entry("mae_vit_large_patch16")
mae_vit_huge_patch14 = _make_entry("mae_vit_huge_patch14")
mae_vit_small_patch16 = _make_entry("mae_vit_small_patch16")
mae_vit_tiny_patch16 = _make_entry("mae_vit_tiny_patch16")
mae_vit_demo_patch4 = _make_entry("mae_vit_demo_patch4")
mae_vit_test = _make_entry("mae_vit_test")
