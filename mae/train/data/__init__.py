"""The pretraining input pipeline: augment, samples from folders or tar shards, batches per process. Image files are
read by ``mae.io.images``, the one image reader pretraining and evaluation share.

* ``augment``: the paper's random resized crop and flip on uint8 tensors, each sample's masking noise
  (``MaskingSpec``), all pure functions of (seed, epoch, index);
* ``datasets``: image folders and the built-in photographs; ``shards``: tar shards; ``make_shards``: the
  ``mae-make-shards`` command that writes them;
* ``loader``: what ``--data`` names, turned into this process's batches (``build_data``, ``build_loader``).
"""

from .augment import MaskingSpec, normalize_on_device
from .loader import Batches, RunData, build_data, build_loader, decode_device_of

__all__ = ["Batches", "MaskingSpec", "RunData", "build_data", "build_loader", "decode_device_of",
           "normalize_on_device"]
