"""Data-path benchmark (not a test): what the in-memory path buys, measured side by side.

Three measurements, each in this one process on the same data:

  decode   images/s of torchvision.io vs PIL decoding real CIFAR-10 JPEGs (and the same
           images re-encoded at 500x375, ImageNet-like), one thread.
  loader   images/s iterating the training set: attnexp's in-memory loader vs torchvision's
           ImageFolder + DataLoader + PIL (RandomCrop(32, 4), flip, ToTensor, Normalize) at
           each of --workers, the best of which is the reference. Target: >= 10x.
  train    images/s of training epochs of ResNet-20 through the real ``attnexp.run.train``
           (Hydra-composed config, in-memory imagefolder data) vs a bare PyTorch loop
           (same model builder, same loader, same optimiser). Target ratio >= 0.95.

Quick run on a 10k-image subset:
  python scripts/bench_data.py --root ~/.cache/attnexp-data/cifar10-jpg --limit 10000
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

DEFAULT_ROOT = "~/.cache/attnexp-data/cifar10-jpg"


class EpochTimer(L.Callback):
    """Epoch wall time and per-step times (between consecutive batch ends), for ``train``.

    Per-step times include everything Lightning does between two optimiser steps (fetching
    the batch, logging, metrics, progress bar); their median is robust to bursts of load
    from other jobs on a shared machine. CPU seconds (all threads of this process) measure
    the work done, whatever share of the CPU other jobs leave us.
    """

    seconds: list[float] = []
    cpu_seconds: list[float] = []
    batches: list[int] = []
    steps: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.perf_counter()
        self._cpu = time.process_time()
        self._count = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        EpochTimer.steps.append(now - self._last)
        self._last = now
        self._count += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        EpochTimer.seconds.append(time.perf_counter() - self._start)
        EpochTimer.cpu_seconds.append(time.process_time() - self._cpu)
        EpochTimer.batches.append(self._count)


def table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


# ----------------------------------------------------------------------------- decode
def bench_decode(root: Path, count: int, repeats: int = 5) -> None:
    import numpy as np
    from PIL import Image

    from attnexp.data.decode import decode_rgb

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    files = sorted((root / "train").rglob("*.jpg"))
    files = files[:: max(1, len(files) // count)][:count]

    def pil_file(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    def rate(fn: Any, items: list[Any]) -> float:
        start = time.perf_counter()
        for item in items:
            fn(item)
        return len(items) / (time.perf_counter() - start)

    large = []
    for path in files[:200]:
        buf = io.BytesIO()
        with Image.open(path) as im:
            im.convert("RGB").resize((500, 375), Image.BICUBIC).save(buf, "JPEG", quality=90)
        large.append(buf.getvalue())
    tmp = Path(tempfile.mkdtemp())
    large_files = []
    for i, data in enumerate(large):
        (tmp / f"{i}.jpg").write_bytes(data)
        large_files.append(tmp / f"{i}.jpg")
    rows = []
    for label, items in (
        (f"CIFAR-10 JPEG 32x32 ({len(files)} files)", files),
        (f"500x375 JPEG q90 ({len(large_files)} files)", large_files),
    ):
        tv_rates, pil_rates = [], []
        for _ in range(repeats):  # alternate, so both see the same background load
            tv_rates.append(rate(decode_rgb, items))
            pil_rates.append(rate(pil_file, items))
        tv, pil = max(tv_rates), max(pil_rates)
        rows.append((label, f"{tv:,.0f}", f"{pil:,.0f}", f"{tv / pil:.2f}x"))
    table(
        f"decode, one thread (best of {repeats} alternating rounds)",
        rows,
        ("images", "torchvision.io img/s", "PIL img/s", "ratio"),
    )
    torch.set_num_threads(previous_threads)


# ----------------------------------------------------------------------------- loader
def folder_config(root: Path, cache_dir: Path, batch_size: int) -> dict[str, Any]:
    return {
        "name": "imagefolder",
        "root": str(root),
        "num_classes": 10,
        "image_size": 32,
        "in_memory": "true",
        "batch_size": batch_size,
        "cache_dir": str(cache_dir),
        "pad": 4,
        "flip": True,
        "shuffle_seed": 0,
    }


def bench_loader(
    root: Path, cache_dir: Path, limit: int, epochs: int, batch_size: int, workers: list[int]
) -> None:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from attnexp.data import build_datamodule
    from attnexp.data.memory import BatchAugment, InMemoryLoader

    start = time.perf_counter()
    dm = build_datamodule(folder_config(root, cache_dir, batch_size))
    prepare = time.perf_counter() - start
    images, labels = dm.splits["train"]
    n = labels.numel()
    subset = (
        torch.randperm(n, generator=torch.Generator().manual_seed(0))[: min(limit, n)].sort().values
    )
    print(
        f"\nloader: {len(subset):,} of {n:,} training images, batch {batch_size}, {epochs} epoch(s) each; "
        f"in-memory data ready in {prepare:.1f}s (decode or cache load, once)"
    )

    def run(make_iter: Any) -> float:
        it = iter(make_iter())
        next(it)  # start workers / first batch outside the timing
        start = time.perf_counter()
        seen = 0
        for _ in range(epochs):
            for x, _y in make_iter():
                seen += x.shape[0]
        return seen / (time.perf_counter() - start)

    loader = InMemoryLoader(
        images[subset],
        labels[subset],
        batch_size,
        dm.mean,
        dm.std,
        shuffle=True,
        augment=BatchAugment(pad=4, flip=True),
        seed=0,
    )
    # The loader builds CPU batches on one intra-op thread whatever the process setting
    # (see attnexp.data.memory._one_cpu_thread), so one measurement covers it.
    ours = run(lambda: loader)
    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(dm.mean, dm.std),
        ]
    )
    dataset = Subset(datasets.ImageFolder(str(root / "train"), transform=tf), subset.tolist())
    rows = [("attnexp in-memory (batched crop/flip)", "-", f"{ours:,.0f}", "")]
    best = 0.0
    for w in workers:
        dl = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            num_workers=w,
            persistent_workers=w > 0,
            pin_memory=False,
        )
        rate = run(lambda dl=dl: dl)
        best = max(best, rate)
        rows.append(("torchvision ImageFolder + PIL", str(w), f"{rate:,.0f}", ""))
        del dl
    rows = [(*r[:3], f"{float(r[2].replace(',', '')) / best:.2f}x") for r in rows]
    print(f"\nin-memory / DataLoader (best num_workers): {ours / best:.1f}x")
    table(
        "loader throughput (augmented training batches)",
        rows,
        ("path", "workers", "images/s", "vs best DataLoader"),
    )


# ----------------------------------------------------------------------------- train
def bench_train(
    root: Path,
    cache_dir: Path,
    limit: int,
    epochs: int,
    batch_size: int,
    repeats: int,
    extra: list[str],
) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from attnexp.builders import to_dict, training_options
    from attnexp.data import build_datamodule
    from attnexp.models import build_model
    from attnexp.run import train
    from attnexp.runtime import register_resolvers
    from attnexp.training import fast_defaults
    from attnexp.training.optim import build_optimizer

    register_resolvers()
    batches = max(1, limit // batch_size)
    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    overrides = [
        "data=imagefolder",
        f"data.root={root}",
        "data.in_memory=true",
        f"data.cache_dir={cache_dir}",
        f"data.batch_size={batch_size}",
        "data.num_classes=10",
        "model=resnet20",
        "attention=none",
        f"trainer.max_epochs={epochs}",
        f"+trainer.limit_train_batches={batches}",
        "+trainer.limit_val_batches=0",
        "test=false",
        "seed=0",
        "+callbacks.bench_timer._target_=__main__.EpochTimer",
        *extra,
    ]
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="attnexp.conf", version_base="1.3"):
        base = compose(config_name="train", overrides=overrides)
    print(
        f"\ntrain: ResNet-20, {batches} batches of {batch_size} = {batches * batch_size:,} images per epoch, "
        f"{epochs} epoch(s), device {'cuda' if torch.cuda.is_available() else 'cpu'}, "
        f"{torch.get_num_threads()} threads; {repeats} alternating repeat(s); extra overrides: {extra}"
    )

    def attnexp_run(i: int) -> tuple[float, float, list[float]]:
        cfg = base.copy()
        with open_dict(cfg):
            cfg.paths.output_dir = str(out / f"run{i}")
        for record in (
            EpochTimer.seconds,
            EpochTimer.cpu_seconds,
            EpochTimer.batches,
            EpochTimer.steps,
        ):
            record.clear()
        train(cfg)
        images = sum(b * batch_size for b in EpochTimer.batches)
        wall, cpu = sum(EpochTimer.seconds), sum(EpochTimer.cpu_seconds)
        return images / wall, images / cpu, list(EpochTimer.steps)

    def bare_run() -> tuple[float, float, list[float]]:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(0)
        dm = build_datamodule(to_dict(base.data))
        # attnexp-train's resolved defaults for this device (memory format, step kernel)
        training, factory = fast_defaults.apply(
            training_options(base), instantiate(base.optimizer), device.type
        )
        fmt = torch.channels_last if training["channels_last"] else torch.contiguous_format
        model = build_model("resnet20", num_classes=10).to(device, memory_format=fmt)
        optimizer = build_optimizer(factory, model)
        criterion = torch.nn.CrossEntropyLoss()
        loader = dm.train_dataloader().to(device)
        model.train()
        seen, wall, cpu, steps = 0, 0.0, 0.0, []
        for _ in range(epochs):
            start = last = time.perf_counter()
            cpu_start = time.process_time()
            for x, y in itertools.islice(loader, batches):
                loss = criterion(model(x.contiguous(memory_format=fmt)), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += y.numel()
                now = time.perf_counter()
                steps.append(now - last)
                last = now
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall += time.perf_counter() - start
            cpu += time.process_time() - cpu_start
        return seen / wall, seen / cpu, steps

    names = ("bare PyTorch loop", "attnexp.run.train")
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    steps: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):  # alternate, so both see the same background load
        for name, run in zip(names, (bare_run, lambda i=i: attnexp_run(i))):
            wall_rate, cpu_rate, step_times = run()
            walls[name].append(wall_rate)
            cpus[name].append(cpu_rate)
            steps[name].extend(step_times)
    ref = {
        "wall": statistics.median(walls[names[0]]),
        "cpu": statistics.median(cpus[names[0]]),
        "step": statistics.median(steps[names[0]]),
    }
    rows = []
    for name in names:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        step = statistics.median(steps[name])
        rows.append(
            (
                name,
                ", ".join(f"{r:,.1f}" for r in walls[name]),
                f"{wall / ref['wall']:.3f}",
                f"{batch_size / step:,.1f} ({ref['step'] / step:.3f})",
                ", ".join(f"{r:,.1f}" for r in cpus[name]),
                f"{cpu / ref['cpu']:.3f}",
            )
        )
    table(
        "training throughput (train epochs only; validation off; ratios = median / bare median)",
        rows,
        (
            "path",
            "wall images/s, each repeat",
            "ratio",
            "median-step images/s (ratio)",
            "images per CPU-second, each repeat",
            "ratio",
        ),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=DEFAULT_ROOT,
        help="ImageFolder root with train/ and test/ (CIFAR-10 JPEGs)",
    )
    parser.add_argument(
        "--limit", type=int, default=50_000, help="training images used (a fixed random subset)"
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", default="0,1,2,3", help="DataLoader num_workers values to try")
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating repeats of the train comparison"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="decode cache (default: a per-user cache)"
    )
    parser.add_argument(
        "--only", default="decode,loader,train", help="comma-separated sections to run"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="extra Hydra overrides for the attnexp run, e.g. callbacks.progress=null",
    )
    args = parser.parse_args(argv)
    root = Path(os.path.expanduser(args.root))
    if not (root / "train").is_dir():
        sys.exit(f"no {root}/train: give --root, the folder holding train/<class>/*.jpg")
    cache_dir = (
        Path(args.cache_dir).expanduser()
        if args.cache_dir
        else Path.home() / ".cache" / "attnexp" / "bench"
    )
    sections = set(args.only.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}"
    )
    if "decode" in sections:
        bench_decode(root, 2000)
    if "loader" in sections:
        bench_loader(
            root,
            cache_dir,
            args.limit,
            args.epochs,
            args.batch_size,
            [int(w) for w in args.workers.split(",")],
        )
    if "train" in sections:
        bench_train(
            root, cache_dir, args.limit, args.epochs, args.batch_size, args.repeats, args.overrides
        )


if __name__ == "__main__":
    main()
