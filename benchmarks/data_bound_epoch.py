"""A data-bound ``mae-pretrain --data`` epoch, before and after the uint8 input pipeline, side by side.

    python benchmarks/data_bound_epoch.py --json benchmarks/data_bound_epoch.json   # the README table (~6 min)

``benchmarks/pipeline.py`` times the pipeline alone; this runs the real trainer on a folder of 3-megapixel JPEGs
with one data-loader worker and a model small enough that the worker, not the training step, sets the pace (the
step's process mostly waits: "data wait" in the summary). The "before" code is the commit preceding the new
pipeline (PIL decode, torchvision RandomResizedCrop/ToTensor/Normalize in the worker), taken from this repository's
history with ``git archive`` into a temporary folder; "after" is this checkout. Both run the same command with the
same Python and packages, alternating, and the table gives images/s of the epochs after the first (which includes
start-up). A third run trains this checkout on shards that ``mae-make-shards --max-side 896`` made of the same folder
once (the conversion is timed separately and printed); it changes two things at once, shards instead of files and
smaller images. Needs this repository's git history (a clone that holds commit ``--before``, not a shallow one).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from pipeline import _cpu_model, make_jpegs  # benchmarks/pipeline.py: the same test images, the CPU's name

from mae.train.data.make_shards import make_shards

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "0944ca1"  # last commit before the uint8 pipeline (8d71b17)
MAX_SIDE = 896  # mae-make-shards --max-side for 224-px training: 4x the crop


def has_commit(commit: str) -> bool:
    """Whether this checkout's git history holds ``commit`` (not in a shallow clone or an unpacked sdist)."""
    try:
        found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                               capture_output=True)
    except OSError:  # no git at all
        return False
    return found.returncode == 0


def extract_commit(commit: str, dest: Path) -> Path:
    """The ``mae`` package as it was at ``commit``, unpacked under ``dest``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "mae"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse links and paths out of dest
            tar.extractall(dest, filter="data")
        else:  # our own archive of our own history
            tar.extractall(dest)
    return dest


def run_epochs(code: Path, data: Path, out: Path, args: argparse.Namespace) -> list[dict]:
    """Train with the ``mae`` package found in ``code``; the per-epoch rows of its metrics.jsonl."""
    command = [sys.executable, "-m", "mae.train", "--data", str(data), "--model", "mae_vit_test",
               "--img-size", "224", "--patch-size", str(args.patch_size), "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs), "--warmup-epochs", "0", "--num-workers", str(args.workers),
               "--threads", "1", "--no-figures", "--no-progress", "--output-dir", str(out.parent), "--name", out.name]
    env = dict(os.environ, PYTHONPATH=str(code))
    run = subprocess.run(command, env=env, capture_output=True, text=True, cwd=code)
    if run.returncode != 0:
        raise SystemExit(f"training with {code} failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row.get("kind") == "epoch"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help=f"commit of the old pipeline (default {BEFORE})")
    parser.add_argument("--images", type=int, default=512, help="3-megapixel JPEGs in the folder (default 512)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each version (default 2)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run, >= 2 (default 3)")
    parser.add_argument("--workers", type=int, default=1, help="data-loader workers (default 1)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--patch-size", type=int, default=32, help="patch size of the small model (default 32)")
    parser.add_argument("--json", help="also write the runs and the table here")
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.images < args.batch_size or min(args.rounds, args.workers) < 1:
        parser.error("need --epochs >= 2, --images >= --batch-size, --rounds >= 1 and --workers >= 1")
    if not has_commit(args.before):
        parser.error(f"commit {args.before} (the old pipeline) is not in this checkout's git history; run from a "
                     "full clone (git fetch --unshallow)")
    results: dict[str, list[dict]] = {"before": [], "after": [], "shrunk": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "images")
        data.mkdir()
        make_jpegs(data, (2048, 1536), args.images)
        start = time.perf_counter()
        make_shards(data, Path(tmp, "shards"), shard_size=128, max_side=MAX_SIDE)
        convert_s = time.perf_counter() - start
        code = {"before": extract_commit(args.before, Path(tmp, "before")), "after": ROOT, "shrunk": ROOT}
        source = {"before": data, "after": data, "shrunk": Path(tmp, "shards")}
        for r in range(args.rounds):
            for version in list(results) if r % 2 == 0 else list(results)[::-1]:
                epochs = run_epochs(code[version], source[version], Path(tmp, "runs", f"{version}-{r}"), args)[1:]
                waits = [e.get("data_wait", float("nan")) for e in epochs]  # the old trainer did not measure it
                results[version].append({"img_per_s": statistics.mean(e["img_per_s"] for e in epochs),
                                         "data_wait": statistics.mean(waits)})
                print(f"round {r + 1} {version}: {results[version][-1]}", flush=True)
    base = statistics.median(run["img_per_s"] for run in results["before"])
    table = []
    print(f"\n| pipeline | epoch img/s (median of {args.rounds} runs, epochs 2-{args.epochs}) | data wait "
          "| vs before |")
    print("|---|---:|---:|---:|")
    for version, runs in results.items():
        speed = statistics.median(run["img_per_s"] for run in runs)
        wait = statistics.median(run["data_wait"] for run in runs)
        label = {"before": f"before ({args.before}: PIL + torchvision)", "after": "after (this checkout)",
                 "shrunk": f"after, on mae-make-shards --max-side {MAX_SIDE} shards"}[version]
        print(f"| {label} | {speed:.1f} | {'n/a' if wait != wait else f'{wait:.0%}'} | {speed / base:.2f}x |")
        table.append({"version": version, "label": label, "img_per_s": speed, "data_wait": wait,
                      "ratio": speed / base})
    print(f"({args.images} JPEGs 2048x1536 q90, mae_vit_test at 224 px / patch {args.patch_size}, batch "
          f"{args.batch_size}, {args.workers} worker(s), 1 torch thread; `python benchmarks/data_bound_epoch.py`)")
    print(f"one-time conversion to --max-side {MAX_SIDE} shards: {convert_s:.1f} s wall for {args.images} images "
          f"({convert_s / args.images * 1000:.1f} ms per image, one process)")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        Path(args.json).write_text(json.dumps({"table": table, "runs": results, "settings": settings,
                                               "conversion_s": convert_s, "cpu": _cpu_model(),
                                               "command": "python benchmarks/data_bound_epoch.py "
                                               + " ".join(argv if argv is not None else sys.argv[1:])},
                                              indent=1, default=str).replace("NaN", "null"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
