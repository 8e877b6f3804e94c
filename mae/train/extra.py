"""The ``train`` extra: which of its packages import, and one clear message when some do not.

The modules of ``mae.train`` import these packages where they use them, so ``mae-pretrain`` can say what to install
in one line instead of a traceback naming the first missing package.
"""

from __future__ import annotations

import importlib

__all__ = ["TRAIN_EXTRA", "MissingTrainExtraError", "missing_train_packages", "require_train_extra"]

INSTALL_HINT = "pip install 'mae-pytorch[train]'"

# import name -> distribution name (as in pyproject's ``train`` extra)
TRAIN_EXTRA = {
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "skimage": "scikit-image",
    "PIL": "pillow",
    "torchvision": "torchvision",
}


class MissingTrainExtraError(ImportError):
    """A package of the ``train`` extra cannot be imported."""


def missing_train_packages() -> list[str]:
    """Distribution names of the ``train`` extra's packages that fail to import (not just those not installed)."""
    missing = []
    for module, distribution in TRAIN_EXTRA.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    return missing


def require_train_extra(what: str) -> None:
    """Raise ``MissingTrainExtraError`` naming ``what`` needs, and how to install it, if any package is missing."""
    missing = missing_train_packages()
    if missing:
        raise MissingTrainExtraError(
            f"{what} needs the train extra ({', '.join(missing)} could not be imported): {INSTALL_HINT}"
        )
