"""Speed benchmarks (``make bench``): is attnexp as fast as the code a user would write?

Everything is measured side by side in this one process, interleaved (A B B A ...) so that
background load and thermal drift hit every contender alike; ratios are medians of the
per-round paired ratios.

  (a) timm   train-step time (forward + cross-entropy + backward + SGD step) of attnexp's
             ResNet-50 with none / se / cbam / eca vs timm's ``ResNet(Bottleneck, [3, 4, 6,
             3], block_args={"attn_layer": ...})`` (timm's resnet50 / seresnet50 layout:
             plain 7x7 stem, stride on the 3x3, module after the last BN of every
             bottleneck), same batch, precision and memory format. A ratio above 1.05 is
             profiled (torch.profiler) and the ops that differ are printed.
  (b) overhead  each module's train-step time over the plain attnexp ResNet-50, next to
             its MAC ratio (conv+linear) and its (MACs + attention ops) ratio.
  (c) epoch  CIFAR ResNet-20/56 training images/s of whole epochs through
             ``attnexp.run.train`` (a Hydra-composed config, synthetic in-memory data) vs a
             bare PyTorch loop over the same in-memory loader, model and optimiser.
  (d) defaults  channels_last vs contiguous training steps (ResNet-20 and ResNet-50) and the
             SGD step kernels (for-loop / foreach / fused) on this device: the evidence
             behind attnexp.training.fast_defaults.
  (e) compile  every gate/stage module's overhead eager and torch.compile'd (with the fused
             gate formulations) over the same plain backbone, MAC ratio, compiled / eager,
             compile time and compiled-vs-eager logits (scripts/bench_compile.py); not in
             the default sections (it compiles 2 models per module).

    python scripts/bench.py                 # all sections (about 30 min on 2 CPU cores)
    python scripts/bench.py --quick         # smaller batches and fewer steps (a few min)
    python scripts/bench.py --sections a,b --batch 16 --steps 10 --json bench.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from attnexp.analysis.profile import cpu_model
from attnexp.models import build_model
from attnexp.models.costs import count_costs

sys.path.insert(0, str(Path(__file__).parent))
import bench_compile as bench_compile_mod  # noqa: E402  (section e, next to this file)

MODULES = ("none", "se", "cbam", "eca")
RESULTS: dict[str, Any] = {}


# ----------------------------------------------------------------------------- helpers
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(
    steps: dict[str, Callable[[], None]], rounds: int, warmup: int, device: str
) -> dict[str, list[float]]:
    """Seconds per call of every step, measured in alternating order round by round."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in steps}
    keys = list(steps)
    for r in range(rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            start = time.perf_counter()
            steps[key]()
            sync(device)
            times[key].append(time.perf_counter() - start)
    return times


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Median and range (25th, 75th percentile) of the per-round ratios a[i] / b[i]."""
    ratios = sorted(x / y for x, y in zip(a, b))
    if len(ratios) < 4:
        return statistics.median(ratios), ratios[0], ratios[-1]
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q[0], q[2]


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A markdown table (paste into docs/benchmarks.md)."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()


def train_step(
    model: nn.Module,
    batch: int,
    size: int,
    device: str,
    channels_last: bool,
    kernel: str | None = "default",
    num_classes: int = 1000,
) -> Callable[[], None]:
    """forward + cross-entropy + backward + SGD(momentum) step on a fixed random batch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if kernel == "default":
        kernel = "fused" if device == "cuda" else "foreach"
    options: dict[str, Any] = {"foreach": False} if kernel in (None, "for-loop") else {kernel: True}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, **options)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def attnexp_resnet50(module: str) -> nn.Module:
    placements = [] if module == "none" else [{"module": module}]
    torch.manual_seed(0)
    return build_model("resnet50", num_classes=1000, placements=placements)


def timm_resnet50(module: str) -> nn.Module:
    from timm.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    args = None if module == "none" else {"attn_layer": module}
    return ResNet(block=Bottleneck, layers=(3, 4, 6, 3), block_args=args)


def op_times(step: Callable[[], None], device: str) -> dict[str, float]:
    """Self time (ms) per ATen op of one call of ``step`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    step()
    with profile(activities=activities) as prof:
        step()
        sync(device)
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    return {e.key: getattr(e, attr) / 1e3 for e in prof.key_averages()}


def explain(name: str, ours: Callable[[], None], theirs: Callable[[], None], device: str) -> None:
    """Print the ops whose time differs most between the two steps."""
    a, b = op_times(ours, device), op_times(theirs, device)
    rows = []
    for op in sorted(set(a) | set(b), key=lambda k: -abs(a.get(k, 0) - b.get(k, 0)))[:12]:
        rows.append(
            (
                op,
                f"{a.get(op, 0):.1f}",
                f"{b.get(op, 0):.1f}",
                f"{a.get(op, 0) - b.get(op, 0):+.1f}",
            )
        )
    table(
        f"(a) profile of {name}: self time per op, one step (ms)",
        ("op", "attnexp", "timm", "diff"),
        rows,
    )
    RESULTS.setdefault("profiles", {})[name] = rows


# ----------------------------------------------------------------------------- (a) + (b)
def bench_timm(args: argparse.Namespace, with_timm: bool = True, overhead: bool = True) -> None:
    modules = [m for m in MODULES if m in args.modules]
    batch, size, device = args.batch, 224, args.device
    print(
        f"\n(a)/(b) ResNet-50 train step: batch {batch} at {size}x{size}, {device}, fp32, "
        f"{'channels_last' if args.channels_last else 'contiguous'}, SGD momentum "
        f"({'fused' if device == 'cuda' else 'foreach'}); {args.warmup} warm-up steps, "
        f"{args.steps} interleaved rounds"
    )
    models = {}
    for m in modules:
        models[f"attnexp/{m}"] = attnexp_resnet50(m)
        if with_timm:
            models[f"timm/{m}"] = timm_resnet50(m)
    costs = {k: count_costs(v) for k, v in models.items()}
    steps = {k: train_step(v, batch, size, device, args.channels_last) for k, v in models.items()}
    times = interleaved(steps, args.steps, args.warmup, device)
    med = {k: statistics.median(v) for k, v in times.items()}

    rows, slow = [], []
    for m in modules if with_timm else ():
        a, t = f"attnexp/{m}", f"timm/{m}"
        ratio, lo, hi = paired_ratio(times[a], times[t])
        rows.append((
            m, f"{costs[a].params:,}", f"{costs[t].params:,}", f"{costs[a].macs / 1e9:.3f}",
            f"{costs[t].macs / 1e9:.3f}", f"{med[a] * 1e3:.0f}", f"{med[t] * 1e3:.0f}",
            f"{ratio:.3f} ({lo:.2f}-{hi:.2f})",
        ))  # fmt: skip
        if ratio > 1.05:
            slow.append(m)
    if with_timm:
        header = ("module", "params attnexp", "params timm", "GMACs attnexp", "GMACs timm",
                  "ms attnexp", "ms timm", "time ratio attnexp/timm (IQR)")  # fmt: skip
        table("(a) attnexp vs timm, ResNet-50 train step", header, rows)
        RESULTS["a"] = {"rows": rows, "times": times, "batch": batch}
    for m in slow:
        explain(m, steps[f"attnexp/{m}"], steps[f"timm/{m}"], device)

    if not overhead or "none" not in modules:
        return
    rows = []
    base = "attnexp/none"
    for m in modules:
        key = f"attnexp/{m}"
        ratio, lo, hi = paired_ratio(times[key], times[base])
        c, c0 = costs[key], costs[base]
        rows.append((
            m, f"{ratio:.3f} ({lo:.2f}-{hi:.2f})", f"{c.macs / c0.macs:.4f}",
            f"{c.macs_with_attention / c0.macs_with_attention:.4f}",
            f"{c.params / c0.params:.3f}",
        ))  # fmt: skip
    table(
        "(b) overhead over the plain attnexp ResNet-50",
        (
            "module",
            "train-step time ratio (IQR)",
            "MAC ratio",
            "(MACs+attn ops) ratio",
            "param ratio",
        ),
        rows,
    )
    RESULTS["b"] = rows


# ----------------------------------------------------------------------------- (c)
class EpochTimer(L.Callback):
    """Seconds of every training epoch (first batch to epoch end, metrics included)."""

    epochs: list[tuple[float, int]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._images = time.perf_counter(), 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, *a: Any
    ) -> None:
        self._images += int(batch[1].numel())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        EpochTimer.epochs.append((time.perf_counter() - self._start, self._images))


def attnexp_epoch(base: Any, output_dir: Path, epochs: int) -> tuple[float, float]:
    """One ``attnexp.run.train`` call; images/s of its last epoch and of the whole call."""
    from omegaconf import open_dict

    from attnexp.run import train

    cfg = base.copy()
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    EpochTimer.epochs.clear()
    start = time.perf_counter()
    train(cfg)
    total = time.perf_counter() - start
    seconds, images = EpochTimer.epochs[-1]
    return images / seconds, sum(n for _, n in EpochTimer.epochs) / total


def args_device(device: str) -> str:
    """The Lightning accelerator name for a torch device type."""
    return "gpu" if device == "cuda" else "cpu"


def bare_epoch(base: Any, model_name: str, epochs: int, device: str) -> tuple[float, float]:
    """The loop a user would write around the same loader, model, optimiser and schedule."""
    from hydra.utils import instantiate

    from attnexp import builders
    from attnexp.data import build_datamodule
    from attnexp.training import fast_defaults
    from attnexp.training.optim import build_optimizer, lr_lambda

    start = time.perf_counter()
    torch.manual_seed(0)
    dm = build_datamodule(builders.to_dict(base.data))
    # The settings attnexp-train resolves for this device (memory format, step kernel), so
    # that the ratio measures the framework's overhead, not a different configuration.
    training, factory = fast_defaults.apply(
        builders.training_options(base), instantiate(base.optimizer), args_device(device)
    )
    memory_format = torch.channels_last if training["channels_last"] else torch.contiguous_format
    model = build_model(model_name, num_classes=10).to(device, memory_format=memory_format)
    optimizer = build_optimizer(factory, model)
    loader = dm.train_dataloader().to(device)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(builders.to_dict(base.scheduler), len(loader) * epochs, len(loader))
    )
    model.train()
    seen, last = 0, (0.0, 0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        epoch_start, images = time.perf_counter(), 0
        for x, y in loader:
            loss = F.cross_entropy(model(x.contiguous(memory_format=memory_format)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            images += y.numel()
        sync(device)
        last = (time.perf_counter() - epoch_start, images)
        seen += images
    return last[1] / last[0], seen / (time.perf_counter() - start)


def bench_epochs(args: argparse.Namespace) -> None:
    import logging
    import warnings

    from attnexp.analysis.profile import hydra_session
    from attnexp.training import fast_defaults

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)  # no banners between the rows
    warnings.filterwarnings("ignore")

    out = Path(tempfile.mkdtemp(prefix="attnexp-bench-"))
    rows = []
    for model_name in args.cifar_models:
        overrides = [
            f"model={model_name}", "data=synthetic", f"data.num_train={args.num_train}",
            "data.num_val=100", "data.num_test=100", f"data.batch_size={args.cifar_batch}",
            f"trainer.max_epochs={args.epochs}", "++trainer.limit_val_batches=0", "test=false",
            "logger=none", "callbacks=none", "++trainer.enable_progress_bar=false",
            f"trainer.accelerator={args_device(args.device)}",
            "++callbacks.bench_timer._target_=__main__.EpochTimer", "seed=0",
        ]  # fmt: skip
        with hydra_session() as compose:
            base = compose(overrides)
        print(
            f"\n(c) {model_name}: {args.num_train} synthetic 32x32 images, batch "
            f"{args.cifar_batch}, {args.epochs} epochs per run (the last one timed), "
            f"{args.repeats} alternating repeat(s); both sides use attnexp's resolved defaults "
            f"for {args.device}: {fast_defaults.describe(args_device(args.device))}"
        )
        ours, bare = [], []
        for r in range(args.repeats):
            order = ("attnexp", "bare") if r % 2 == 0 else ("bare", "attnexp")
            for who in order:
                if who == "attnexp":
                    ours.append(attnexp_epoch(base, out / f"{model_name}-{r}", args.epochs))
                else:
                    bare.append(bare_epoch(base, model_name, args.epochs, args.device))
                print(f"  {who}: {(ours if who == 'attnexp' else bare)[-1][0]:,.0f} images/s")
        ratio, lo, hi = paired_ratio([o[0] for o in ours], [b[0] for b in bare])
        overall = paired_ratio([o[1] for o in ours], [b[1] for b in bare])[0]
        rows.append((
            model_name, f"{statistics.median(o[0] for o in ours):,.0f}",
            f"{statistics.median(b[0] for b in bare):,.0f}", f"{ratio:.3f} ({lo:.2f}-{hi:.2f})",
            f"{overall:.3f}",
        ))  # fmt: skip
    header = ("model", "attnexp-train img/s (last epoch)", "bare loop img/s (last epoch)",
              "ratio attnexp/bare (range)", "ratio incl. setup")  # fmt: skip
    table("(c) CIFAR training epochs, images/s (higher is better)", header, rows)
    RESULTS["c"] = rows


# ----------------------------------------------------------------------------- (d)
def bench_defaults(args: argparse.Namespace) -> None:
    device = args.device
    cases = [("resnet20", args.cifar_batch, 32, 10)]
    if not args.quick:
        cases.append(("resnet50", args.batch, 224, 1000))
    rows = []
    for name, batch, size, classes in cases:
        steps = {}
        for cl in (False, True):
            torch.manual_seed(0)
            model = build_model(name, num_classes=classes)
            steps[cl] = train_step(model, batch, size, device, cl, num_classes=classes)
        times = interleaved(steps, args.steps, args.warmup, device)
        ratio, lo, hi = paired_ratio(times[True], times[False])
        rows.append((
            f"{name}, batch {batch} at {size}", f"{statistics.median(times[False]) * 1e3:.0f}",
            f"{statistics.median(times[True]) * 1e3:.0f}", f"{ratio:.3f} ({lo:.2f}-{hi:.2f})",
        ))  # fmt: skip
    table(
        f"(d) memory format, train step on {device}",
        ("model", "ms contiguous", "ms channels_last", "time ratio cl/contiguous (IQR)"),
        rows,
    )
    RESULTS["d_memory_format"] = rows

    # optimiser step alone, ResNet-50 parameters with gradients
    model = build_model("resnet50", num_classes=1000).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    steps = {}
    for kernel in ("for-loop", "foreach", "fused"):
        options = {"foreach": False} if kernel == "for-loop" else {kernel: True}
        try:
            opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9, **options)
        except (RuntimeError, ValueError):
            continue
        steps[kernel] = opt.step
    times = interleaved(steps, max(args.steps, 10), 2, device)
    base = times["for-loop"]
    rows = [
        (k, f"{statistics.median(v) * 1e3:.1f}", f"{paired_ratio(v, base)[0]:.2f}")
        for k, v in times.items()
    ]
    table(
        f"(d) SGD step over ResNet-50's 161 parameter tensors on {device}",
        ("kernel", "ms", "time ratio to for-loop"),
        rows,
    )
    RESULTS["d_optimizer"] = rows


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batches, few steps")
    parser.add_argument("--batch", type=int, help="ResNet-50 batch (default 16, quick 4)")
    parser.add_argument("--steps", type=int, help="interleaved rounds (default 10, quick 3)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per model (default 2, quick 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", default="a,b,c,d", help="any of a,b,c,d,e")
    parser.add_argument("--modules", default=",".join(MODULES), help="for (a)/(b)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC in (a)/(b)")
    parser.add_argument("--cifar-models", default=None, help="default resnet20,resnet56")
    parser.add_argument("--cifar-batch", type=int, default=128)
    parser.add_argument("--num-train", type=int, help="(c) images per epoch (default 5000)")
    parser.add_argument("--epochs", type=int, default=2, help="(c) epochs per run (last timed)")
    parser.add_argument("--repeats", type=int, help="(c) alternating repeats (default 2)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: all)")
    parser.add_argument("--json", type=Path, help="write the results here")
    bench_compile_mod.add_arguments(parser)
    args = parser.parse_args(argv)
    args.compile_models = args.compile_models.split(",")
    args.compile_modules = args.compile_modules.split(",") if args.compile_modules else None
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when piped to a file
    q = args.quick
    args.batch = args.batch or (4 if q else 16)
    args.steps = args.steps or (3 if q else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 2)
    args.modules = args.modules.split(",")
    args.cifar_models = (args.cifar_models or ("resnet20" if q else "resnet20,resnet56")).split(",")
    args.num_train = args.num_train or (1024 if q else 5000)
    args.repeats = args.repeats or (1 if q else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = set(args.sections.split(","))

    machine = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import timm

        machine["timm"] = timm.__version__
    except ImportError:
        if "a" in sections:
            print("timm is not installed (pip install -e '.[bench]'); skipping (a)")
            sections.discard("a")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    RESULTS["machine"] = machine
    RESULTS["args"] = {k: v for k, v in vars(args).items() if k != "json"}
    started = time.time()
    if "a" in sections or "b" in sections:
        bench_timm(args, with_timm="a" in sections, overhead="b" in sections)
    if "c" in sections:
        bench_epochs(args)
    if "d" in sections:
        bench_defaults(args)
    if "e" in sections:
        bench_compile_mod.bench_compile(args, RESULTS, table)
    RESULTS["seconds"] = time.time() - started
    print(
        f"\ndone in {RESULTS['seconds']:.0f}s; load average now {machine['load_average'] and os.getloadavg()}"
    )
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
