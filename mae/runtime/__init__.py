"""What pretraining and evaluation share: the process group, precision, the lr schedule, the one training loop, and
the config-to-command-line mechanism with the one way every command ends.

* ``distributed``: torchrun and SLURM (srun) set-up, device choice, sums and gathers across processes;
* ``preemption``: SIGTERM/SIGUSR1 recorded for a clean stop, its exit code, the SLURM requeue;
* ``loop``: precision and autocast, ``lr_at_step``, ``Schedule`` and ``Trainer.train_epoch`` (accumulation,
  ``no_sync``, grad scaler, the non-finite check, lr per step with per-group ``lr_scale``, throughput);
* ``cli``: config dataclass -> flags (``option``, ``build_parser``), ``CommandConfig``, ``run_command``.
"""
