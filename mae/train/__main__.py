"""``python -m mae.train`` (also under ``torchrun``) is ``mae-pretrain``."""

from .cli import main

raise SystemExit(main())
