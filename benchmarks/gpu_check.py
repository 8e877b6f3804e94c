"""The GPU path in one run: CUDA tests, nccl + exact resume, throughput against Hugging Face, the input pipeline.

    python benchmarks/gpu_check.py                 # on one GPU, at most about 8 minutes; writes JSON + markdown
    python benchmarks/gpu_check.py --dry-run       # the same harness on the CPU at toy sizes, well under a minute

Each section is timed, and its result or its error is recorded, so one failure does not lose the others:

  cuda_tests     ``pytest -m cuda`` over the test files that hold CUDA tests (they skip without a GPU);
  pretrain       ``python -m mae.train`` as one torchrun process (nccl on the GPU; gloo in the dry run), decoding
                 on the device: twice straight (is the GPU run repeatable at all?) and once stopped after epoch 1
                 and resumed; the final weights are compared bit for bit;
  throughput     ViT-B/16 and ViT-L/16 at 224 px, mask 0.75, bf16 autocast: ours eager and torch.compile'd against
                 Hugging Face ViTMAE in alternating rounds (``bench.measure``), MFU against the bf16 matmul peak
                 measured in the same run, peak memory, and the largest batch that fits (doubling);
  pipeline       the worker's CPU cost per image on one core (``pipeline.time_candidate``) for ImageNet-sized and
                 3-megapixel JPEGs, decoding in the worker or leaving JPEGs to the device, and the cores one GPU
                 needs to feed the measured ViT-B throughput;
  device_decode  3-megapixel JPEGs decoded on the device (``finish_batch``) against the CPU pipeline: images/s and
                 the pixel gap to the worker's pixels.

The dry run uses ``mae_vit_test`` at 32-64 px, batches of 2-8, gloo instead of nccl, ``torch.compile`` with the
eager backend, and the device-decode function on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # bench.py and pipeline.py, run from a checkout

import bench  # noqa: E402
import pipeline  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from mae import create_model  # noqa: E402
from mae.io.images import jpeg_decoder  # noqa: E402
from mae.train.data.augment import MaskingSpec, augment_sample, collate_samples, finish_batch  # noqa: E402


@dataclass(frozen=True)
class Plan:
    """The sizes of one run: the GPU's, or the dry run's toy ones."""

    device: str
    presets: tuple[str, ...]
    img_size: int
    batch_size: int  # throughput batch
    repeats: int
    compile_backend: str
    batch_search: tuple[int, int]  # (first, largest tried) of the doubling search
    train_args: tuple[str, ...]  # mae-pretrain's model and size flags
    train_images: int
    pipeline_images: int
    decode_batch: int
    test_timeout: int
    warmup: int  # untimed steps before the throughput rounds (compile happens in the first)
    repeat_control: bool  # a second straight run: is training repeatable at all on this device (CPU: known to be)


GPU = Plan("cuda", ("mae_vit_base_patch16", "mae_vit_large_patch16"), 224, 128, 5, "inductor", (256, 4096),
           ("--model", "mae_vit_small_patch16", "--img-size", "224", "--batch-size", "16", "--num-workers", "4"),
           64, 32, 64, 240, 3, True)
DRY = Plan("cpu", ("mae_vit_test",), 32, 2, 2, "eager", (2, 8),
           ("--model", "mae_vit_test", "--img-size", "32", "--batch-size", "4", "--num-workers", "0",
            "--threads", "1"), 16, 2, 4, 120, 1, False)


# ---------------------------------------------------------------------------------------------------- sections


def cuda_tests(plan: Plan, work: Path) -> dict[str, Any]:
    """``pytest -m cuda`` over every test file that marks CUDA tests; counts from pytest's summary line."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "mark.cuda" in p.read_text())
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files],
                          cwd=ROOT, capture_output=True, text=True, timeout=plan.test_timeout)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    result = {"files": files, "returncode": done.returncode, "summary": summary, **counts}
    if done.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest -m cuda: {summary}\n{done.stdout[-3000:]}")
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pretrain(plan: Plan, data: Path, out: Path, name: str, *extra: str) -> subprocess.Popen:
    """Start ``python -m mae.train`` with the environment torchrun gives its one process: a process group of one."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
           "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "TORCHELASTIC_RUN_ID": "gpu_check"}
    args = [sys.executable, "-m", "mae.train", "--data", str(data), *plan.train_args, "--device", plan.device,
            "--decode-device", plan.device, "--epochs", "2", "--warmup-epochs", "1", "--keep-every", "0",
            "--no-progress", "--no-figures", "--output-dir", str(out), "--name", name, *extra]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(run: subprocess.Popen, out: Path, name: str) -> dict[str, Any]:
    start = time.perf_counter()
    _, stderr = run.communicate(timeout=300)
    if run.returncode:
        raise RuntimeError(f"mae-pretrain {name} exited {run.returncode}: {stderr.strip()[-2000:]}")
    resolved = json.loads((out / name / "train_config.json").read_text())["resolved"]
    return {"waited_s": time.perf_counter() - start, "resolved": resolved}


def _weights_gap(a: Path, b: Path) -> dict[str, Any]:
    wa, wb = (load_file(p / "checkpoints" / "last" / "model.safetensors") for p in (a, b))
    diff = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    return {"identical": all(torch.equal(wa[k], wb[k]) for k in wa) and wa.keys() == wb.keys(), "max_abs_diff": diff}


def pretrain(plan: Plan, work: Path) -> dict[str, Any]:
    data = work / "train_jpegs"
    data.mkdir()
    pipeline.make_jpegs(data, (500, 375), plan.train_images)
    out = work / "runs"
    # the three independent runs at once (their own process groups), then the resume of the stopped one
    names = ("straight", "split", "again") if plan.repeat_control else ("straight", "split")
    started = {name: _pretrain(plan, data, out, name, *(("--stop-after-epoch", "1") if name == "split" else ()))
               for name in names}
    runs = {name: _finished(run, out, name) for name, run in started.items()}
    runs["resumed"] = _finished(_pretrain(plan, data, out, "split", "--resume", str(out / "split")), out, "split")
    resolved = runs["straight"]["resolved"]
    return {"backend": resolved["backend"], "device": resolved["device"], "precision": resolved["precision"],
            "world_size": resolved["world_size"], "steps": resolved["total_steps"],
            "resumed_from": runs["resumed"]["resolved"]["resumed_from"],
            "repeat": _weights_gap(out / "straight", out / "again") if plan.repeat_control else None,
            "resume": _weights_gap(out / "straight", out / "split")}


def _largest_batch(impl: bench.Impl, cfg, plan: Plan) -> dict[str, Any]:
    """Double the batch from ``plan.batch_search[0]`` until a train step runs out of memory (or the cap)."""
    first, cap = plan.batch_search
    fits, peak, batch = None, None, first
    while batch <= cap:
        try:
            imgs = torch.randn(batch, cfg.in_chans, *cfg.img_size, device=plan.device)
            peak = bench.peak_step_memory(lambda imgs=imgs: bench.train_step(impl, imgs, torch.bfloat16), plan.device)
            fits = batch
        except torch.OutOfMemoryError:
            break
        finally:
            imgs = None
            impl.optimizer.zero_grad(set_to_none=True)
            if plan.device == "cuda":
                torch.cuda.empty_cache()
        batch *= 2
    return {"largest_batch": fits, "peak_mem_bytes": peak, "capped_at": cap if fits == cap else None}


def throughput(plan: Plan, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"rows": [], "largest_batch": {}}
    for preset in plan.presets:
        cfg = create_model(preset, img_size=plan.img_size, mask_ratio=0.75, norm_pix_loss=True, device="meta").config
        ours = bench.build_ours(cfg, plan.device, "loss_only")
        impls = [ours, bench.compiled(ours, fullgraph=True, backend=plan.compile_backend),
                 bench.build_hf(cfg, plan.device)]
        rows = bench.measure(impls, cfg, plan.batch_size, "bf16", plan.device, plan.repeats, warmup=plan.warmup)
        for row in rows:
            row["preset"] = preset
            row.pop("train_s"), row.pop("forward_s")
        results["rows"] += rows
        results["largest_batch"][preset] = {"ours": _largest_batch(ours, cfg, plan),
                                            "HF": _largest_batch(impls[-1], cfg, plan)}
        del impls, ours
        if plan.device == "cuda":
            torch.cuda.empty_cache()
    return results


def _encoded_candidate(size: int):
    """The worker's share when JPEGs are decoded on the device: read, header, draws, bytes; batched."""
    def sample(path: Path, index: int):
        return augment_sample(path.read_bytes(), str(path), size=size, noise=MaskingSpec(pipeline.PATCHES), seed=0,
                              epoch=0, index=index, encoded=True)

    return sample, collate_samples


def input_pipeline(plan: Plan, work: Path, model_img_s: float | None) -> dict[str, Any]:
    torch.set_num_threads(1)  # per core, as pipeline.py measures
    size = plan.img_size if plan.device == "cpu" else pipeline.SIZE
    rows = []
    for set_name, image_size in pipeline.SETS.items():
        folder = work / f"pipeline_{image_size[0]}x{image_size[1]}"
        folder.mkdir()
        paths = pipeline.make_jpegs(folder, image_size, plan.pipeline_images)
        candidates = {"decode in the worker (default)": pipeline.our_pipeline(size, simplejpeg=True),
                      "JPEG left to the device (--decode-device cuda)": _encoded_candidate(size)}
        for name, candidate in candidates.items():
            pipeline.time_candidate(candidate, paths[:2], pipeline.BATCH)  # warm-up
            seconds = statistics.median(pipeline.time_candidate(candidate, paths, pipeline.BATCH) for _ in range(3))
            row = {"set": set_name, "worker": name, "img_per_s_per_core": 1 / seconds}
            if model_img_s:
                row["cores_per_gpu"] = model_img_s / row["img_per_s_per_core"]
            rows.append(row)
    return {"rows": rows, "cpu_cores": os.cpu_count(), "model_img_s": model_img_s, "crop": size,
            "model": "fastest ViT-B/16 row of the throughput section" if model_img_s else None}


def device_decode(plan: Plan, work: Path) -> dict[str, Any]:
    """3-megapixel JPEGs: the batch decoded on the device against the worker's CPU pipeline, speed and pixels."""
    folder = work / "decode_3mp"
    folder.mkdir()
    paths = pipeline.make_jpegs(folder, pipeline.SETS["3 megapixels (2048x1536)"], min(plan.decode_batch, 16))
    paths = [paths[i % len(paths)] for i in range(plan.decode_batch)]
    size = plan.img_size if plan.device == "cpu" else pipeline.SIZE
    kw = dict(size=size, noise=MaskingSpec(pipeline.PATCHES), seed=0, epoch=0)
    data = [p.read_bytes() for p in paths]
    encoded = collate_samples([augment_sample(d, "x", index=i, encoded=True, **kw) for i, d in enumerate(data)])
    worker = collate_samples([augment_sample(d, "x", index=i, **kw) for i, d in enumerate(data)])
    sync = torch.cuda.synchronize if plan.device == "cuda" else (lambda: None)
    finish_batch(encoded, plan.device)  # warm-up: the decoder's handles and buffers
    times = []
    for _ in range(3):
        sync()
        start = time.perf_counter()
        images, _ = finish_batch(encoded, plan.device)
        sync()
        times.append(time.perf_counter() - start)
    start = time.process_time()
    collate_samples([augment_sample(d, "x", index=i, **kw) for i, d in enumerate(data)])
    cpu_per_image = (time.process_time() - start) / len(data)
    diff = (images.cpu().int() - worker[0].int()).abs().float()
    return {"decoder": jpeg_decoder(), "device": plan.device, "batch": len(data), "crop": size,
            "device_img_s": len(data) / statistics.median(times), "cpu_img_s_per_core": 1 / cpu_per_image,
            "pixel_gap": {"mean": diff.mean().item(), "worst_view_mean": diff.mean(dim=(1, 2, 3)).max().item(),
                          "max": diff.max().item()}}


# ---------------------------------------------------------------------------------------------------- harness


def run_section(name: str, fn: Callable[[], Any], sections: dict[str, Any]) -> Any:
    """Run one section, timed; record its result, or its error, and go on."""
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    try:
        result = fn()
        sections[name] = {"ok": True, "seconds": time.perf_counter() - start, "result": result}
    except Exception as err:  # one failure must not lose the other sections
        result = None
        sections[name] = {"ok": False, "seconds": time.perf_counter() - start, "error": f"{type(err).__name__}: {err}",
                          "traceback": traceback.format_exc()[-4000:]}
        print(f"   failed: {type(err).__name__}: {err}", flush=True)
    print(f"   {sections[name]['seconds']:.1f} s", flush=True)
    return result


def fastest_vit_b(throughput_result: dict[str, Any] | None) -> float | None:
    rows = [r for r in (throughput_result or {}).get("rows", []) if not r["impl"].startswith("HF")]
    base = [r for r in rows if r["preset"] == "mae_vit_base_patch16"] or rows  # the dry run's toy model
    return max((r["train_img_s"] for r in base), default=None)


def _gib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB"


def markdown(report: dict[str, Any]) -> str:
    """One summary table (every section), then the throughput and pipeline rows."""
    s = report["sections"]
    lines = [f"GPU check{' (DRY RUN on the CPU, toy sizes)' if report['dry_run'] else ''}: {report['machine']}; "
             f"{report['total_seconds']:.0f} s. Command: `{report['command']}`", "",
             "| section | status | seconds | result |", "|---|---|---:|---|"]
    for name, sec in s.items():
        lines.append(f"| {name} | {'ok' if sec['ok'] else 'FAILED'} | {sec['seconds']:.1f} | "
                     f"{_summary(name, sec) if sec['ok'] else sec['error'].splitlines()[0][:200]} |")
    if s.get("throughput", {}).get("ok"):
        lines += ["", "| model | implementation | train img/s | vs HF | peak mem / step | MFU | largest batch |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        largest = s["throughput"]["result"]["largest_batch"]
        for r in s["throughput"]["result"]["rows"]:
            who = "HF" if r["impl"].startswith("HF") else "ours"
            big = largest[r["preset"]][who]["largest_batch"] if "compile" not in r["impl"] else ""
            ratio = f"{r['train_ratio_vs_hf']:.2f}x" if "train_ratio_vs_hf" in r else ""
            lines.append(f"| {r['preset']} | {r['impl']} | {r['train_img_s']:.1f} | {ratio} | "
                         f"{_gib(r['peak_mem_bytes'])} | {100 * r['mfu']:.0f}% | {big} |")
    if s.get("input_pipeline", {}).get("ok"):
        lines += ["", "| images | worker | img/s per core | cores per GPU |", "|---|---|---:|---:|"]
        for r in s["input_pipeline"]["result"]["rows"]:
            cores = f"{r['cores_per_gpu']:.1f}" if "cores_per_gpu" in r else "n/a"
            lines.append(f"| {r['set']} | {r['worker']} | {r['img_per_s_per_core']:.0f} | {cores} |")
    return "\n".join(lines) + "\n"


def _summary(name: str, sec: dict[str, Any]) -> str:
    r = sec["result"]
    if name == "cuda_tests":
        return r["summary"]
    if name == "pretrain":
        repeat = "not run" if r["repeat"] is None else r["repeat"]["identical"]
        return (f"backend {r['backend']}, {r['device']}, {r['precision']}, {r['steps']} steps; resume identical: "
                f"{r['resume']['identical']} (max diff {r['resume']['max_abs_diff']:.3g}); two straight runs "
                f"identical: {repeat}")
    if name == "throughput":
        peak = r["rows"][0]["matmul_peak_flops"] if r["rows"] else 0
        return f"{len(r['rows'])} rows; bf16 matmul peak {peak / 1e12:.1f} TFLOP/s"
    if name == "input_pipeline":
        return f"{r['cpu_cores']} CPU cores; model {r['model_img_s'] or 0:.0f} img/s"
    if name == "device_decode":
        return (f"{r['decoder']} on {r['device']}: {r['device_img_s']:.0f} img/s vs {r['cpu_img_s_per_core']:.0f} "
                f"per CPU core; pixel gap mean {r['pixel_gap']['mean']:.2f}")
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same harness on the CPU at toy sizes (CI)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for gpu_check.json and .md (default: benchmarks/; dry run: a temp folder)")
    parser.add_argument("--skip", nargs="*", default=[], help="sections to leave out",
                        choices=["cuda_tests", "pretrain", "throughput", "input_pipeline", "device_decode"])
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check.py: error: no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU machine, "
              "or pass --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    plan = DRY if args.dry_run else GPU
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu_check_")) if args.dry_run else HERE)
    command = "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started, sections = time.perf_counter(), {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_work_") as tmp:
        work = Path(tmp)
        steps = {"cuda_tests": lambda: cuda_tests(plan, work), "pretrain": lambda: pretrain(plan, work),
                 "throughput": lambda: throughput(plan, work)}
        for name, fn in steps.items():
            if name not in args.skip:
                run_section(name, fn, sections)
        model_img_s = fastest_vit_b(sections.get("throughput", {}).get("result"))
        if "input_pipeline" not in args.skip:
            run_section("input_pipeline", lambda: input_pipeline(plan, work, model_img_s), sections)
        if "device_decode" not in args.skip:
            run_section("device_decode", lambda: device_decode(plan, work), sections)
    report = {"dry_run": args.dry_run, "machine": bench.machine(), "python": platform.python_version(),
              "command": command, "plan": asdict(plan), "total_seconds": time.perf_counter() - started,
              "sections": sections}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    return 0 if all(sec["ok"] for sec in sections.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
