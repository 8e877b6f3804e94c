"""The paper's Table 1 ablations at small scale, on the built-in digits. One command, about 35 min on 2 busy cores.

    python benchmarks/ablations.py [--seeds 0 1 2] [--variants ...] [--epochs N] [--out runs/ablations]
    python benchmarks/ablations.py --smoke --out /tmp/ablations-smoke      # seconds: the CI version

Each variant changes one thing of a small baseline MAE (``MODEL``: 32 px digits, patch 4, width 64, depth 2, decoder
32 wide, 2 blocks, normalised-pixel target, 75% random masking): mask ratio 0.25 / 0.5 / 0.9, block or grid masking,
the plain pixel target, decoder depth 1 or 4. The baseline serves every row group (Table 1's grey rows). For each
variant and seed it pretrains with benchmarks/evaluate_digits.py's loop (``pretrain``) and scores the encoder with the
library's kNN and linear probe on cached features (``frozen_protocols``); fine-tuning only with ``--finetune-epochs``
(off by default: about 10x the time of the two frozen protocols together).

Writes, atomically after every (variant, seed) so an interrupted run still yields rows: ``<out>/results.json``
(config and one row per run), ``<out>/results.md`` (mean +- std over seeds per protocol and variant) and
``<out>/ablations.png``. Rerunning with the same ``--out`` and settings skips the runs already in results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from evaluate_digits import FINETUNE, MODEL, _stat, frozen_protocols, pretrain, random_init

from mae.eval import FinetuneConfig, finetune
from mae.io.atomic import atomic_write, write_json

# evaluate_digits' model made smaller (27 pretrainings must fit about 35 min) and with 64 patches instead of 16, so
# that block and grid masking differ from random masking at all.
BASELINE = {**MODEL, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 4, "decoder_embed_dim": 32,
            "decoder_depth": 2, "decoder_num_heads": 4, "norm_pix_loss": True, "mask_ratio": 0.75,
            "masking": "random"}
# variant name -> what it changes in BASELINE
VARIANTS = {
    "baseline": {},
    "ratio0.25": {"mask_ratio": 0.25},
    "ratio0.5": {"mask_ratio": 0.5},
    "ratio0.9": {"mask_ratio": 0.9},
    "block": {"masking": "block"},
    "grid": {"masking": "grid"},
    "pixel": {"norm_pix_loss": False},
    "decoder1": {"decoder_depth": 1},
    "decoder4": {"decoder_depth": 4},
    "random_init": {},  # the baseline architecture, not pretrained: what pretraining adds (dotted lines in the plot)
}
UNTRAINED = "random_init"
# Table rows: (ablation, setting, variant, the paper's fine-tune / linear top-1 on ImageNet, ViT-L, DESIGN.md 9).
# The paper's baseline has decoder depth 8 and the plain pixel target; ours has depth 2 and normalised pixels.
ROWS = [
    ("mask ratio", "0.25", "ratio0.25", "linear lower (Fig. 5: it rises steadily up to 0.75)"),
    ("mask ratio", "0.5", "ratio0.5", "linear lower (Fig. 5)"),
    ("mask ratio", "0.75", "baseline", "84.9 / 73.5"),
    ("mask ratio", "0.9", "ratio0.9", "not in DESIGN.md (Fig. 5)"),
    ("masking", "random 0.75", "baseline", "84.9 / 73.5"),
    ("masking", "block 0.75", "block", "82.8 / 63.9"),
    ("masking", "grid 0.75", "grid", "84.0 / 66.0"),
    ("target", "pixel", "pixel", "84.9 / 73.5"),
    ("target", "normalised pixel", "baseline", "85.4 / 73.9"),
    ("decoder depth", "1", "decoder1", "84.8 / 65.5"),
    ("decoder depth", "2", "baseline", "84.9 / 70.0"),
    ("decoder depth", "4", "decoder4", "84.9 / 71.9"),
    ("no pretraining", "random init", UNTRAINED, "82.5 from scratch (fine-tune)"),
]
SMOKE = {"variants": ["baseline", "grid", "pixel", UNTRAINED], "seeds": [0, 1], "epochs": 1,
         "probe_epochs": 2}


def run_variant(variant: str, seed: int, epochs: int, out: Path, probe_epochs: int | None,
                finetune_epochs: int) -> dict:
    """Pretrain one variant with one seed and score its encoder: one row of results.json."""
    if variant == UNTRAINED:
        model, stats = random_init(seed, BASELINE), {"epochs": 0, "steps": 0, "seconds": 0.0}
    else:
        model, stats = pretrain(seed, epochs, {**BASELINE, **VARIANTS[variant]})
    common = {"output_dir": str(out / "runs" / f"{variant}-seed{seed}"), "seed": seed, "progress": False}
    row = {"variant": variant, "seed": seed, "pretrain": stats, **frozen_protocols(model, "mae", common, probe_epochs)}
    if finetune_epochs:
        decay = 1.0 if variant == UNTRAINED else 0.65  # from scratch without layer decay, as evaluate_digits
        r = finetune(FinetuneConfig(name="finetune-mae", epochs=finetune_epochs, layer_decay=decay, **FINETUNE,
                                    **common), encoder=model)
        row["finetune"] = {"acc1": r["val_acc1"], "seconds": r["seconds"]}
    return row


def protocols(rows: list[dict]) -> list[str]:
    return [p for p in ("finetune", "knn", "linprobe") if any(p in r for r in rows)]


def table(rows: list[dict]) -> str:
    """Markdown: one line per Table 1 row whose variant has results, mean +- std over seeds per protocol."""
    protos = protocols(rows)
    lines = ["| ablation | setting | " + " | ".join(f"{p} top-1 %" for p in protos)
             + " | seeds | paper (ImageNet, ViT-L: fine-tune / linear) |",
             "|---|---|" + "---|" * len(protos) + "---|---|"]
    for group, setting, variant, paper in ROWS:
        done = [r for r in rows if r["variant"] == variant]
        if done:
            accs = " | ".join(_stat([r[p]["acc1"] for r in done]) for p in protos)
            lines.append(f"| {group} | {setting} | {accs} | {len(done)} | {paper} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """One panel per ablation: mean top-1 with std error bars for each protocol."""
    import matplotlib  # lazy: an optional third-party package

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(g for g, _, v, _ in ROWS if v != UNTRAINED))
    untrained = [r for r in rows if r["variant"] == UNTRAINED]
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.6), sharey=True)
    for ax, group in zip(axes, groups, strict=True):
        settings = [(s, v) for g, s, v, _ in ROWS if g == group and any(r["variant"] == v for r in rows)]
        for k, proto in enumerate(protocols(rows)):
            xs, means, sds = [], [], []
            for i, (_, variant) in enumerate(settings):
                accs = [r[proto]["acc1"] for r in rows if r["variant"] == variant]
                xs.append(i + 0.15 * (k - 1))
                means.append(statistics.mean(accs))
                sds.append(statistics.stdev(accs) if len(accs) > 1 else 0.0)
            line = ax.errorbar(xs, means, yerr=sds, fmt="o-", capsize=3, label=proto)
            if untrained:
                ax.axhline(statistics.mean(r[proto]["acc1"] for r in untrained), ls=":",
                           color=line.lines[0].get_color(), label=f"{proto}, random init")
        ax.set_xticks(range(len(settings)), [s for s, _ in settings])
        ax.set_title(group)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 % (359 held-out digits)")
    axes[0].legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_outputs(out: Path, config: dict, rows: list[dict], wall: float) -> None:
    write_json(out / "results.json", {"config": config, "rows": rows, "wall_seconds": wall})
    pretrain_s = statistics.mean([r["pretrain"]["seconds"] for r in rows if r["variant"] != UNTRAINED] or [0.0])
    md = (f"{table(rows)}\n\nval top-1 (%) on the 359 held-out digits, mean +- std over seeds; pretraining "
          f"{config['epochs']} epochs (mean {pretrain_s:.0f} s per run); {len(rows)} runs, wall time {wall:.0f} s "
          f"with {config['threads']} torch thread(s).\n")
    atomic_write(out / "results.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))
    plot(rows, out / "ablations.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                        help=f"subset of {list(VARIANTS)}")
    parser.add_argument("--epochs", type=int, default=30, help="pretraining epochs per run")
    parser.add_argument("--probe-epochs", type=int, default=None, help="linear-probe epochs (default: the digits' 90)")
    parser.add_argument("--finetune-epochs", type=int, default=0, help="also fine-tune this many epochs (0: off)")
    parser.add_argument("--out", default="runs/ablations")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--smoke", action="store_true", help=f"tiny CI version: {SMOKE}")
    args = parser.parse_args(argv)
    if args.smoke:
        args.variants, args.seeds, args.epochs, args.probe_epochs = (SMOKE[k] for k in
                                                                     ("variants", "seeds", "epochs", "probe_epochs"))
    for name in ("epochs", "probe_epochs", "finetune_epochs"):
        value = getattr(args, name)
        if value is not None and (value < 0 or (value == 0 and name != "finetune_epochs")):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    config = {"baseline": BASELINE, "variants": {v: VARIANTS[v] for v in args.variants}, "epochs": args.epochs,
              "probe_epochs": args.probe_epochs, "finetune_epochs": args.finetune_epochs, "threads": args.threads}
    rows, wall_before = [], 0.0
    if (out / "results.json").exists():  # our own file: continue that study if it had the same settings
        previous = json.loads((out / "results.json").read_text())
        same = {k: v for k, v in previous["config"].items() if k != "variants"} == {
            k: v for k, v in config.items() if k != "variants"}
        if not same:
            print(f"{out}/results.json holds a study with other settings; pass another --out (nothing is deleted)",
                  file=sys.stderr)
            return 2
        rows, wall_before = previous["rows"], previous["wall_seconds"]
        config["variants"] = {**previous["config"]["variants"], **config["variants"]}
    t0 = time.perf_counter()
    for seed in args.seeds:  # seed-major: a partial run has every variant at least once
        for variant in args.variants:
            if any(r["variant"] == variant and r["seed"] == seed for r in rows):
                continue
            rows.append(run_variant(variant, seed, args.epochs, out, args.probe_epochs, args.finetune_epochs))
            write_outputs(out, config, rows, wall_before + time.perf_counter() - t0)
            r, scores = rows[-1], ", ".join(f"{p} {rows[-1][p]['acc1']:.1f}" for p in protocols(rows[-1:]))
            stats = r["pretrain"]
            loss = f", loss {stats['first_loss']:.3f} -> {stats['last_loss']:.3f}" if stats["steps"] else ""
            print(f"{variant} seed {seed}: pretrain {stats['seconds']:.0f} s{loss}; {scores}", flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
