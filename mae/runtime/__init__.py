"""What pretraining and evaluation share: the process group, precision, the lr schedule, the one training loop, and
the config-to-command-line mechanism with the one way every command ends.

* ``distributed``: torchrun set-up, device choice, sums and gathers across processes;
* ``loop``: precision and autocast, ``lr_at_step``, ``Schedule`` and ``Trainer.train_epoch`` (accumulation,
  ``no_sync``, grad scaler, the non-finite check, lr per step with per-group ``lr_scale``, throughput);
* ``cli``: config dataclass -> flags (``option``, ``build_parser``), ``CommandConfig``, ``run_command``.
"""
