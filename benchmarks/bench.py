"""Training and inference speed of mae-pytorch against Hugging Face ``ViTMAEForPreTraining``, side by side.

One command measures, for a preset, batch size, image size, precision (fp32, bf16 autocast) and device (cpu, cuda),
eager and optionally ``torch.compile``:

- train step images/s: forward + backward + fused AdamW step (ours: ``model(imgs).loss`` and
  ``model(imgs, loss_only=True).loss``; HF: ``model(...).loss``);
- forward-only images/s (``torch.no_grad``; both return loss, per-patch predictions and mask);
- peak memory of one train step (CUDA: ``max_memory_allocated``; CPU: peak RSS above the pre-step RSS, sampled);
- FLOPs per step counted with ``torch.utils.flop_counter`` and MFU = FLOPs / step time / matmul peak, the peak being
  the best dense matmul rate measured in the same run, in the same dtype, between the timed rounds.

The implementations run in ALTERNATING rounds (A B, then B A, ...) so that a busy machine slows both alike; the
table reports medians and the ratio of medians. HF is built with the same dimensions, sdpa attention, LayerNorm eps
1e-6, the same mask ratio and norm_pix_loss.

    python benchmarks/bench.py --preset mae_vit_base_patch16 --batch-size 8 --precision fp32 bf16
    python benchmarks/bench.py --compile ...          # adds compiled rows (ours: fullgraph=True, recompiles counted)
    python benchmarks/bench.py --sweep --plot benchmarks/scaling.png   # throughput vs batch, image size, mask ratio
    python benchmarks/bench.py --tiny                 # seconds-long smoke run (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mae import MAEConfig, MaskedAutoEncoder, create_model  # noqa: E402
from mae.functional import num_kept  # noqa: E402
from mae.io.hf import config_to_hf  # noqa: E402
from mae.layers import explicit_attention  # noqa: E402

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# Our two ways to get a training loss: the plain ``loss, pred, mask = model(imgs)`` every user writes, and the
# trainer's ``model(imgs, loss_only=True)`` (decoder's last block and head on the removed patches only).
PATHS = {"plain": False, "loss_only": True}


# ---------------------------------------------------------------------------------------------------------- models


@dataclass
class Impl:
    """One implementation under test: how to get a training loss and a forward pass out of it."""

    name: str
    model: torch.nn.Module
    train_loss: Callable[[torch.Tensor], torch.Tensor]
    forward: Callable[[torch.Tensor], Any]
    optimizer: torch.optim.Optimizer = field(init=False)
    notes: list[str] = field(default_factory=list)
    eager: Impl | None = None  # for a compiled Impl: the eager one (FLOP counting cannot see into compiled code)

    def __post_init__(self) -> None:
        # Fused AdamW (one kernel for all parameters) for both: the optimizer should not decide the race.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)


def build_ours(cfg: MAEConfig, device: str, path: str = "loss_only") -> Impl:
    model = MaskedAutoEncoder.from_config(cfg, device=device).train()
    loss_only = PATHS[path]
    return Impl(f"mae-pytorch {path}", model, lambda x: model(x, loss_only=loss_only).loss, model)


def build_hf(cfg: MAEConfig, device: str) -> Impl:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    hf_cfg = ViTMAEConfig(**config_to_hf(cfg))  # the library's own mapping: same dimensions, LayerNorm eps 1e-6
    hf_cfg._attn_implementation = "sdpa"
    model = ViTMAEForPreTraining(hf_cfg).to(device).train()
    impl = Impl("HF ViTMAE", model, lambda x: model(pixel_values=x).loss, lambda x: model(pixel_values=x))
    impl.notes.append(f"attn_implementation={model.config._attn_implementation}")
    return impl


def build_impls(cfg: MAEConfig, device: str, args: argparse.Namespace) -> list[Impl]:
    """Ours on each requested path, then HF last (the base of the ratios)."""
    return [build_ours(cfg, device, path) for path in args.paths] + ([] if args.no_hf else [build_hf(cfg, device)])


def compiled(impl: Impl, fullgraph: bool, backend: str = "inductor") -> Impl:
    """The same model and optimizer, with the loss and forward functions wrapped in ``torch.compile``.

    ``backend="eager"`` traces the graphs without generating code: the plumbing of a compiled row in seconds (the
    dry run of ``gpu_check.py``), not its speed."""
    wrap = {"fullgraph": fullgraph, "backend": backend}
    out = Impl(impl.name + " +compile", impl.model, torch.compile(impl.train_loss, **wrap),
               torch.compile(impl.forward, **wrap), list(impl.notes), eager=impl)
    out.optimizer = impl.optimizer
    out.notes.append(f"fullgraph={fullgraph}" + ("" if backend == "inductor" else f", backend={backend}"))
    return out


# ---------------------------------------------------------------------------------------------------------- steps


def autocast(device: str, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=dtype)


def train_step(impl: Impl, imgs: torch.Tensor, dtype: torch.dtype | None) -> None:
    with autocast(imgs.device.type, dtype):
        loss = impl.train_loss(imgs)
    loss.backward()
    impl.optimizer.step()
    impl.optimizer.zero_grad(set_to_none=True)


def forward_step(impl: Impl, imgs: torch.Tensor, dtype: torch.dtype | None) -> None:
    with torch.no_grad(), autocast(imgs.device.type, dtype):
        impl.forward(imgs)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timed(fn: Callable[[], Any], device: str) -> float:
    """Seconds one call takes on ``clock``: wall time by default; process CPU time with ``--clock cpu``, which a
    busy shared machine disturbs far less (use it with ``--threads 1``, where CPU time is compute time)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = clock()
    fn()
    sync()
    return clock() - start


# ---------------------------------------------------------------------------------------------------------- FLOPs


def _cpu_flash_fwd(query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_flash_bwd(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


# torch's counter knows the CUDA attention kernels but not the CPU flash kernel; count it with the same formulas.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_fwd,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_bwd,
}


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(dtype: torch.dtype, device: str, shapes: list[tuple[int, int, int]]) -> float:
    """Best dense matmul rate (FLOP/s) over ``shapes``, each timed a few times: the denominator of MFU."""
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        a @ b  # warm-up (allocator, kernel choice)
        for _ in range(3):
            best = max(best, 2 * m * k * n / timed(lambda a=a, b=b: a @ b, device))
    return best


# ---------------------------------------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_step_memory(fn: Callable[[], Any], device: str) -> int | None:
    """Peak memory one call adds: CUDA from the allocator's counters, CPU as sampled RSS above the pre-call RSS."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    if not os.path.exists("/proc/self/statm"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the step's own growth shows in RSS
    base = peak = _rss_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak, _rss_bytes()) - base


# ---------------------------------------------------------------------------------------------------------- runner


def dynamo_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def measure(
    impls: list[Impl],
    cfg: MAEConfig,
    batch_size: int,
    precision: str,
    device: str,
    repeats: int,
    warmup: int,
    extras: bool = True,
) -> list[dict[str, Any]]:
    """Warm up every implementation, then time train steps and forward passes in alternating rounds."""
    dtype = PRECISIONS[precision]
    torch.manual_seed(0)
    imgs = torch.randn(batch_size, cfg.in_chans, *cfg.img_size, device=device)
    H, W = cfg.img_size
    tokens = batch_size * (1 + cfg.num_patches)
    # A large square matmul and the decoder MLP's own shape; the best of them is the peak (small models: smaller).
    side = 256 if cfg.embed_dim < 256 else 8192 if device == "cuda" else 2048
    peak_shapes = [(side, side, side), (tokens, cfg.decoder_embed_dim, int(cfg.decoder_embed_dim * cfg.mlp_ratio))]
    mm_dtype = dtype or torch.float32

    rows = []
    for impl in impls:
        row: dict[str, Any] = {"impl": impl.name, "precision": precision, "batch_size": batch_size,
                               "img_size": H, "mask_ratio": cfg.mask_ratio, "notes": list(impl.notes)}
        graphs_before = dynamo_graphs()
        t0 = time.perf_counter()
        for _ in range(warmup):  # the first calls compile (if compiled) and settle the allocator
            train_step(impl, imgs, dtype)
            forward_step(impl, imgs, dtype)
        row["warmup_s"] = time.perf_counter() - t0
        row["graphs"] = dynamo_graphs() - graphs_before
        print(f"  {precision} {impl.name}: warm-up {row['warmup_s']:.1f} s", flush=True)
        if extras:  # FLOPs and memory do not depend on timing noise: one untimed step each
            counted = impl.eager or impl  # the same computation; the counter cannot look inside compiled code
            row["train_flops"] = count_flops(lambda c=counted: train_step(c, imgs, dtype))
            row["forward_flops"] = count_flops(lambda c=counted: forward_step(c, imgs, dtype))
            row["peak_mem_bytes"] = peak_step_memory(lambda impl=impl: train_step(impl, imgs, dtype), device)
        row["train_s"], row["forward_s"] = [], []
        rows.append(row)

    graphs_before = dynamo_graphs()
    peaks = []
    for r in range(repeats):
        order = list(range(len(impls)))
        if r % 2:
            order.reverse()  # A B, B A, A B, ...: neither always runs first
        peaks.append(matmul_peak(mm_dtype, device, peak_shapes))
        for i in order:
            rows[i]["train_s"].append(timed(lambda i=i: train_step(impls[i], imgs, dtype), device))
        for i in order:
            rows[i]["forward_s"].append(timed(lambda i=i: forward_step(impls[i], imgs, dtype), device))
    recompiled = dynamo_graphs() - graphs_before

    peak = statistics.median(peaks)
    for row in rows:
        train, fwd = statistics.median(row["train_s"]), statistics.median(row["forward_s"])
        row.update(
            train_img_s=batch_size / train, forward_img_s=batch_size / fwd, matmul_peak_flops=peak,
            recompiles_while_timing=recompiled,
        )
        if extras:
            row["mfu"] = row["train_flops"] / train / peak
    base = rows[-1] if len(rows) > 1 else None
    for row in rows:
        if base is not None and base["impl"].startswith("HF") and "compile" not in base["impl"]:
            row["train_ratio_vs_hf"] = row["train_img_s"] / base["train_img_s"]
            row["forward_ratio_vs_hf"] = row["forward_img_s"] / base["forward_img_s"]
    return rows


# ---------------------------------------------------------------------------------------------------------- output


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    if torch.cuda.is_available():
        cpu += f" / {torch.cuda.get_device_name()}"
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, {clock.__name__}"


def fmt_mem(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:,.0f} MiB"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| precision | implementation | train img/s | vs HF | forward img/s | vs HF | peak mem / step | "
        "GFLOP / train step | MFU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['train_ratio_vs_hf']:.2f}x" if "train_ratio_vs_hf" in r else ""
        fratio = f"{r['forward_ratio_vs_hf']:.2f}x" if "forward_ratio_vs_hf" in r else ""
        lines.append(
            f"| {r['precision']} | {r['impl']} | {r['train_img_s']:.2f} | {ratio} | {r['forward_img_s']:.2f} | "
            f"{fratio} | {fmt_mem(r['peak_mem_bytes'])} | {r['train_flops'] / 1e9:.3g} | {100 * r['mfu']:.0f}% |"
        )
    return "\n".join(lines)


def describe_peaks(rows: list[dict[str, Any]]) -> str:
    peaks = {r["precision"]: r["matmul_peak_flops"] for r in rows}
    return ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items())


def readme_section(rows: list[dict[str, Any]], args: argparse.Namespace, argv: list[str] | None) -> str:
    command = " ".join(["python benchmarks/bench.py", *(sys.argv[1:] if argv is None else argv)])
    r0 = rows[0]
    lines = [
        f"Machine: {machine()}. Model: `{args.preset if not args.tiny else 'tiny'}`, {r0['img_size']} px, batch "
        f"{r0['batch_size']}, mask ratio {r0['mask_ratio']}, norm_pix_loss {not args.no_norm_pix_loss}; train step = "
        "forward + backward + fused AdamW. Medians of "
        f"{args.repeats} alternating rounds; ratios are ours / Hugging Face `ViTMAEForPreTraining` (sdpa).",
        "",
        table(rows),
        "",
        f"Matmul peak measured in the same run: {describe_peaks(rows)}. "
        "MFU = FLOPs counted by `torch.utils.flop_counter` for one train step / median step time / that peak.",
    ]
    for r in rows:
        if r["graphs"]:
            lines.append(f"`{r['impl']}` ({r['precision']}): {r['graphs']} graph(s), "
                         f"{r['recompiles_while_timing']} recompiles while timing, compile + warm-up "
                         f"{r['warmup_s']:.0f} s.")
    lines += ["", "Reproduce:", "", "```bash", command, "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- attention


def attention_kernels(cfg: MAEConfig, batch_size: int, device: str, repeats: int) -> str:
    """Forward + backward time of SDPA vs explicit matmul-softmax-matmul attention for the model's two shapes.

    The evidence for the rule in ``mae.layers.attention`` (explicit kernels for bf16 on the CPU).
    """
    import torch.nn.functional as F

    K = num_kept(cfg.num_patches, cfg.mask_ratio)
    shapes = {
        "encoder": (batch_size, cfg.num_heads, 1 + K, cfg.embed_dim // cfg.num_heads),
        "decoder": (batch_size, cfg.decoder_num_heads, 1 + cfg.num_patches,
                    cfg.decoder_embed_dim // cfg.decoder_num_heads),
    }
    lines = ["| shape (B, h, N, d) | dtype | SDPA fwd+bwd ms | explicit fwd+bwd ms |", "|---|---|---:|---:|"]
    for name, shape in shapes.items():
        for precision in ("fp32", "bf16"):
            dtype = PRECISIONS[precision] or torch.float32
            q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
            grad = torch.randn(shape, device=device, dtype=dtype)
            kernels = {"sdpa": F.scaled_dot_product_attention, "explicit": explicit_attention}
            times: dict[str, list[float]] = {n: [] for n in kernels}
            for r in range(repeats + 1):
                for n in list(kernels)[:: 1 if r % 2 else -1]:
                    t = timed(lambda f=kernels[n], qkv=(q, k, v), g=grad: f(*qkv).backward(g), device)
                    if r:  # round 0 warms up
                        times[n].append(t)
            sdpa_ms, expl_ms = (1e3 * statistics.median(times[n]) for n in kernels)
            lines.append(f"| {name} {shape} | {precision} | {sdpa_ms:.1f} | {expl_ms:.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- sweep


def sweep(args: argparse.Namespace, base: MAEConfig, device: str) -> list[dict[str, Any]]:
    """Train-step throughput of both implementations as batch size, image size and mask ratio vary."""
    points = [("batch_size", b, {}, b) for b in args.sweep_batch_sizes]
    points += [("img_size", s, {"img_size": s}, args.batch_size) for s in args.sweep_img_sizes]
    points += [("mask_ratio", m, {"mask_ratio": m}, args.batch_size) for m in args.sweep_mask_ratios]
    results = []
    for axis, value, overrides, batch in points:
        cfg = base.replace(**overrides)
        impls = build_impls(cfg, device, args)
        for row in measure(impls, cfg, batch, args.precision[0], device, args.sweep_repeats, 1, extras=False):
            row.update(axis=axis, value=value)
            results.append(row)
            print(f"  sweep {axis}={value}: {row['impl']} {row['train_img_s']:.2f} img/s", flush=True)
        del impls
    return results


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = ["batch_size", "img_size", "mask_ratio"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, axis in zip(axes, axes_names, strict=True):
        for impl in dict.fromkeys(r["impl"] for r in results):
            pts = sorted((r["value"], r["train_img_s"]) for r in results if r["axis"] == axis and r["impl"] == impl)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=impl)
        if axis == "batch_size":
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({r["value"] for r in results if r["axis"] == axis}))
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel(axis.replace("_", " "))
        ax.set_ylabel("train images/s")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mae_vit_base_patch16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--no-norm-pix-loss", action="store_true", help="default: norm_pix_loss on (the paper's best)")
    p.add_argument("--precision", nargs="+", choices=sorted(PRECISIONS), default=["fp32", "bf16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd versions")
    p.add_argument("--compile-hf", action="store_true", help="with --compile, compile HF too (slow to compile)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per implementation (medians reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time (default) or process CPU time (robust on a busy machine, with --threads 1)")
    p.add_argument("--no-hf", action="store_true", help="time mae-pytorch only")
    p.add_argument("--paths", nargs="+", choices=sorted(PATHS), default=sorted(PATHS),
                   help="our training paths to time: plain model(imgs) and/or model(imgs, loss_only=True)")
    p.add_argument("--sweep", action="store_true", help="throughput vs batch size, image size and mask ratio")
    p.add_argument("--sweep-batch-sizes", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--sweep-img-sizes", type=int, nargs="+", default=[224, 448])
    p.add_argument("--sweep-mask-ratios", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    p.add_argument("--sweep-repeats", type=int, default=2)
    p.add_argument("--plot", type=Path, default=Path("benchmarks/scaling.png"))
    p.add_argument("--json", type=Path, default=None, help="write every measurement here")
    p.add_argument("--readme", type=Path, default=None, help="write the results as a README-ready markdown section")
    p.add_argument("--tiny", action="store_true", help="smoke mode: tiny model, 2 rounds, seconds")
    p.add_argument("--attention", action="store_true", help="only time the attention kernels (SDPA vs explicit)")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        p.error(f"--batch-size and --repeats must be >= 1 and --warmup >= 0, got "
                f"{args.batch_size}, {args.repeats}, {args.warmup}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda given but torch.cuda.is_available() is False")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    global clock
    args = parse_args(argv)
    clock = CLOCKS[args.clock]
    if args.clock == "cpu" and args.device == "cuda":
        print("--clock cpu measures host CPU time, not GPU time: using wall time on cuda")
        clock = CLOCKS["wall"]
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_hf:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers is not installed (pip install 'mae-pytorch[bench]'): timing mae-pytorch only")
            args.no_hf = True
    overrides = dict(mask_ratio=args.mask_ratio, norm_pix_loss=not args.no_norm_pix_loss)
    if args.tiny:
        cfg = MAEConfig.from_name("mae_vit_test", decoder_depth=1, **overrides)
        args.batch_size, args.repeats = 2, 2
        args.sweep_batch_sizes, args.sweep_img_sizes, args.sweep_repeats = [1, 2], [32, 64], 1
        args.sweep_mask_ratios = [0.5, 0.75]
    else:
        cfg = create_model(args.preset, img_size=args.img_size, device="meta", **overrides).config
    device = args.device

    print(f"# {machine()}")
    if args.attention:
        print(attention_kernels(cfg, args.batch_size, device, max(args.repeats, 5)))
        return []
    print(f"# {args.preset if not args.tiny else 'tiny'}: img {cfg.img_size}, batch {args.batch_size}, "
          f"mask_ratio {cfg.mask_ratio}, norm_pix_loss {cfg.norm_pix_loss}, {args.repeats} alternating rounds")
    rows: list[dict[str, Any]] = []
    for precision in args.precision:
        impls = build_impls(cfg, device, args)
        if args.compile:
            impls.insert(1, compiled(impls[0], fullgraph=True))
            if args.compile_hf and not args.no_hf:
                impls.insert(2, compiled(impls[-1], fullgraph=False))
        new = measure(impls, cfg, args.batch_size, precision, device, args.repeats, args.warmup)
        rows += new
        print(table(new), flush=True)
        del impls
    print()
    print(table(rows))
    print(f"\nmatmul peak measured in this run: {describe_peaks(rows)}; times are medians of {args.repeats} "
          f"alternating rounds; MFU = counted FLOPs of the train step / median step time / peak.")
    for r in rows:
        if r["graphs"]:
            print(f"{r['precision']} {r['impl']}: {r['graphs']} graph(s) compiled in warm-up "
                  f"({r['warmup_s']:.0f} s), {r['recompiles_while_timing']} new graph(s) while timing")

    sweep_rows = []
    if args.sweep:
        print("\nscaling sweep (train step, precision " + args.precision[0] + ")", flush=True)
        sweep_rows = sweep(args, cfg, device)
        name = "tiny" if args.tiny else args.preset
        plot(sweep_rows, args.plot, f"{name}, {args.precision[0]}, train step (fwd+bwd+AdamW); {machine()}")
        print(f"plot saved to {args.plot}")
    if args.readme:
        args.readme.parent.mkdir(parents=True, exist_ok=True)
        args.readme.write_text(readme_section(rows, args, argv))
        print(f"markdown written to {args.readme}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows, "sweep": sweep_rows}, indent=1))
    return rows + sweep_rows


if __name__ == "__main__":
    main()
