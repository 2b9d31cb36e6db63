"""The GPU figures docs/benchmarks.md needs, in a few minutes on one GPU (scripts/gpu_check.sh).

1. ResNet-50 train step (forward + loss + backward + SGD) in bf16 autocast with channels_last,
   224x224, for none / se / cbam / eca: images per second.
2. One CIFAR-sized ResNet-20 epoch (50,000 32x32 synthetic images, the in-memory loader on
   the GPU) through ``attnexp.run.train``: fit time and images per second from the run record.

``--dry-run`` runs both on the CPU at toy sizes (a smoke test of this script, not a figure).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

MODULES = ("none", "se", "cbam", "eca")


def resnet50_images_per_s(module: str, device: str, batch: int, size: int, steps: int) -> float:
    from attnexp.models import build_model

    torch.manual_seed(0)
    placements = [] if module == "none" else [{"module": module}]
    model = build_model("resnet50", num_classes=1000, placements=placements).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 1000, (batch,), device=device)
    fused = {"fused": True} if device == "cuda" else {"foreach": True}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, **fused)
    dtype = torch.bfloat16

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=dtype):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(max(steps // 4, 1)):  # warm-up: cuDNN autotuning, allocator
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def cifar_epoch(device: str, num_train: int) -> dict:
    from attnexp.compose import compose_config
    from attnexp.run import train

    accelerator = "gpu" if device == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(
            [
                "model=resnet20",
                f"data.num_train={num_train}",
                "data.num_val=1000",
                "data.num_test=1000",
                "data.batch_size=128",
                "trainer.max_epochs=2",  # the second epoch is the warm one
                f"trainer.accelerator={accelerator}",
                "logger=none",
                "callbacks.progress=null",
                "test=false",
            ],
            Path(tmp) / "run",
        )
        record = train(cfg)
    return {
        "fit_seconds_2_epochs": record["throughput"]["fit_seconds"],
        "train_images_per_s": record["throughput"]["train_images_per_s"],
        "val_top1_err": record["final"]["val_top1_err"],
        "precision": record["throughput"]["precision"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes (no figures)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.dry_run:
        device, batch, size, steps, num_train = "cpu", 2, 64, 2, 256
    elif torch.cuda.is_available():
        device, batch, size, steps, num_train = "cuda", 128, 224, 30, 50_000
    else:
        print("gpu_check: no CUDA GPU visible (use --dry-run to smoke-test on the CPU)")
        return 2
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor()})"
    results: dict = {
        "date": datetime.date.today().isoformat(),
        "device": gpu,
        "torch": torch.__version__,
        "dry_run": args.dry_run,
        "resnet50_bf16_channels_last": {},
    }
    for module in MODULES:
        ips = resnet50_images_per_s(module, device, batch, size, steps)
        results["resnet50_bf16_channels_last"][module] = round(ips, 1)
        print(f"ResNet-50 + {module:<4} bf16 channels_last batch {batch} @{size}: {ips:8.1f} img/s")
    results["cifar_resnet20_epoch"] = cifar_epoch(device, num_train)
    print(f"CIFAR ResNet-20, in-memory loader on {device}: {results['cifar_resnet20_epoch']}")
    print("\n## For docs/benchmarks.md")
    print(f"Measured {results['date']} on {gpu}, torch {torch.__version__}.\n")
    print("| ResNet-50 train step (bf16, channels_last, batch 128, 224x224) | images/s |")
    print("|---|---|")
    for module, ips in results["resnet50_bf16_channels_last"].items():
        print(f"| {module} | {ips:.0f} |")
    epoch = results["cifar_resnet20_epoch"]
    print(
        f"\nCIFAR ResNet-20 ({num_train} images, in-memory loader on the device): "
        f"{epoch['train_images_per_s']:.0f} images/s over 2 epochs "
        f"({epoch['fit_seconds_2_epochs']:.1f} s fit, precision {epoch['precision']})."
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
