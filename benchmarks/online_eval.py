"""Does the online kNN rise while MAE pretrains, and what does one evaluation cost? About 10 min on 2 cores.

    python benchmarks/online_eval.py [--seeds 0 1 2] [--out runs/online_eval]

Every run is a plain ``mae-pretrain`` with ``--eval-every`` (so epoch 0 is the starting weights, the baseline), in
two settings, each for every seed:

* ``digits``: pretraining on the built-in digits, the kNN's own domain. Their train split (1,438 images) is written
  as 32 px PNGs in class folders and passed as ``--data`` with ``DIGITS_ARGS``; the kNN (default ``--eval-data``: the
  digits, 256 of each split) queries the val split, which pretraining never sees.
* ``default``: the default run (12 photographs, 2 epochs) with ``--eval-every 1``: its kNN on the digits is off the
  domain it trains on.

From each run's metrics.jsonl it takes the kNN top-1 and masked-patch PSNR of every evaluation and the seconds of each
evaluation against the seconds of the epoch before it. Writes ``<out>/online_eval.json`` and ``<out>/online_eval.md``
(mean +- std over seeds) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mae.eval.data import DigitsDataset
from mae.train.report import read_metrics

# mae-pretrain's recipe with --data (the paper's), sized to the 8 x 8 digits: 32 px crops of 8 px patches (16 per
# image) on the demo preset, 30 epochs of 22 steps at batch 64. The paper's blr (1.5e-4, for 800 epochs at batch
# 4096) gives lr 3.75e-5 at batch 64, which hardly moves the features in 660 steps (measured: the kNN stays flat);
# blr 4e-3 gives lr 1e-3, the lr of benchmarks/evaluate_digits.py.
DIGITS_ARGS = ["--model", "mae_vit_demo_patch4", "--img-size", "32", "--patch-size", "8", "--norm-pix-loss",
               "--epochs", "30", "--blr", "4e-3", "--eval-every", "3"]
DEFAULT_ARGS = ["--eval-every", "1"]
SETTINGS = {"digits": DIGITS_ARGS, "default": DEFAULT_ARGS}
SMOKE_ARGS = ["--epochs", "2", "--eval-every", "1", "--eval-images", "64"]  # --smoke: the whole harness in seconds


def write_digits(root: Path) -> Path:
    """The digits' train split as ``root/<digit>/<index>.png``, 32 px, drawn by ``DigitsDataset`` (the kNN's own)."""
    digits = DigitsDataset("train", 32)
    for i in range(len(digits)):
        img, label = digits[i]
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        img.save(root / str(label) / f"{i:04d}.png")
    return root


def run(setting: str, seed: int, out: Path, digits: Path, extra: list[str]) -> dict:
    """One ``mae-pretrain`` run (``extra``: flags after the setting's); its evaluations and what each cost."""
    name = f"{setting}-seed{seed}"
    data = ["--data", str(digits)] if setting == "digits" else []
    cmd = [sys.executable, "-m", "mae.train", *data, *SETTINGS[setting], *extra, "--seed", str(seed), "--name", name,
           "--output-dir", str(out / "runs"), "--no-progress", "--num-workers", "1"]
    print(" ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)  # a failed run raises CalledProcessError (main says which, in one line)
    records = read_metrics(out / "runs" / name / "metrics.jsonl")
    epoch_seconds = {r["epoch"]: r["seconds"] for r in records if r.get("kind") == "epoch"}
    evals = [{"epoch": r["epoch"], "knn_top1": r["knn_top1"], "recon_psnr": r["recon_psnr"], "seconds": r["seconds"],
              "epoch_seconds": epoch_seconds.get(r["epoch"])} for r in records if r.get("kind") == "eval"]
    return {"setting": setting, "seed": seed, "command": ["mae-pretrain", *cmd[3:]], "evals": evals}


def _cpu() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _stat(values: list[float], fmt: str = "{:.1f}") -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(statistics.mean(values))} +- {fmt.format(sd)}"


def table(rows: list[dict], setting: str) -> str:
    """kNN top-1 and PSNR at each evaluated epoch (mean +- std over seeds), and the cost of one evaluation."""
    runs = [r for r in rows if r["setting"] == setting]
    epochs = [e["epoch"] for e in runs[0]["evals"]]
    at = [{e["epoch"]: e for e in r["evals"]} for r in runs]
    lines = ["| after epoch | " + " | ".join(str(e) for e in epochs) + " |", "|---" * (len(epochs) + 1) + "|"]
    lines.append("| kNN top-1 (%) | " + " | ".join(_stat([a[e]["knn_top1"] for a in at]) for e in epochs) + " |")
    lines.append("| masked-patch PSNR (dB) | " + " | ".join(_stat([a[e]["recon_psnr"] for a in at], "{:.2f}")
                                                          for e in epochs) + " |")
    costs = [e["seconds"] for r in runs for e in r["evals"]]
    shares = [e["seconds"] / e["epoch_seconds"] for r in runs for e in r["evals"] if e["epoch_seconds"]]
    lines.append(f"\nOne evaluation: median {statistics.median(costs):.1f} s ({min(costs):.1f}-{max(costs):.1f}), "
                 f"median {statistics.median(shares):.0%} of the epoch before it ({min(shares):.0%}-{max(shares):.0%})"
                 f"; {len(runs)} seed(s).")
    return "\n".join(lines)


def _seed(text: str) -> int:
    """A ``--seeds`` value: a whole number >= 0, as mae-pretrain's --seed takes."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a seed must be a whole number >= 0, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=_seed, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--out", default="runs/online_eval")
    parser.add_argument("--smoke", action="store_true", help="one short digits run (" + " ".join(SMOKE_ARGS) + ")")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.settings = args.seeds[:1], ["digits"]
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; pass another --out (nothing is deleted)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    digits = write_digits(out / "digits" / "train")
    extra = SMOKE_ARGS if args.smoke else []
    try:
        rows = [run(setting, seed, out, digits, extra) for setting in args.settings for seed in args.seeds]
    except subprocess.CalledProcessError as err:
        print(f"online_eval: {' '.join(err.cmd[2:])} failed with exit code {err.returncode} (its message is above); "
              f"the runs so far are in {out / 'runs'}", file=sys.stderr)
        return 1
    md = "\n\n".join(f"{setting} ({' '.join(SETTINGS[setting] + extra)}):\n\n{table(rows, setting)}"
                     for setting in args.settings)
    summary = {"args": vars(args), "settings": {s: SETTINGS[s] for s in args.settings}, "rows": rows,
               "machine": _cpu(), "threads": torch.get_num_threads(), "wall_seconds": time.perf_counter() - t0}
    (out / "online_eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "online_eval.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
