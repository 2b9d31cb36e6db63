"""Section (e) of scripts/bench.py: what each attention module costs eager and compiled.

For every module (default: every registered gate and stage module) on each backbone, in one
process with interleaved rounds: train-step time (forward + cross-entropy + backward + fused
SGD step) eager and ``torch.compile``d (default options, ``dynamic=False``; the fused gate
formulations of attnexp.attention.fused are what the compiler traces). Reported per module:

* eager overhead     eager step / eager plain-backbone step
* compiled overhead  compiled step / compiled plain-backbone step
* MAC ratio          conv + linear multiply-adds / the plain backbone's
* compiled / eager   the module's compiled step / its eager step
* unfused overhead   (``--unfused``) compiled with the fused formulations off
* max |diff|         compiled vs eager logits on the same batch (train mode, float32)
* compile s          first compiled step minus an eager step (cache state as found)

    python scripts/bench.py --sections e                                  # all modules
    python scripts/bench.py --sections e --modules none,se,eca,cbam --unfused \
        --compile-models resnet20 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from attnexp.attention import available, fused
from attnexp.models import build_model
from attnexp.models.costs import count_costs
from attnexp.training.compile import allow_many_compiled_models

#: (batch, image size, classes) per backbone; ResNet-50 is small on the CPU so the section
#: finishes (GPU: the ImageNet shape).
SHAPES = {
    "cpu": {"resnet20": (128, 32, 10), "resnet50": (8, 64, 1000)},
    "cuda": {"resnet20": (128, 32, 10), "resnet50": (64, 224, 1000)},
}


def _model(name: str, module: str, device: str, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    placements = [] if module == "none" else [{"module": module}]
    model = build_model(name, num_classes=classes, placements=placements)
    return model.to(device).to(memory_format=torch.channels_last).train()


def _step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: str,
    fused_mode: str = "auto",
) -> Callable[[], torch.Tensor]:
    opt_kw: dict[str, Any] = {"fused": True} if device in ("cpu", "cuda") else {}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, **opt_kw)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with fused.mode(fused_mode), autocast:
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        return logits

    return step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_compile(args: argparse.Namespace, results: dict[str, Any], table: Callable) -> None:
    device = args.device
    # Every model here is one more compiled entry of the same code object; past dynamo's
    # default limit of 8 the later models would silently run eagerly (max diff exactly 0).
    allow_many_compiled_models(64 + 4 * len(args.compile_modules or available()))
    modules = args.compile_modules or ["none", *available("gate"), *available("stage")]
    # the plain backbone first, each module once (a module can be both a gate and a stage)
    modules = list(dict.fromkeys(["none", *modules]))
    for name in args.compile_models:
        batch, size, classes = SHAPES.get(device, SHAPES["cpu"])[name]
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=gen).to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, classes, (batch,), generator=gen).to(device)
        steps: dict[tuple[str, str], Callable[[], torch.Tensor]] = {}
        info: dict[str, dict[str, Any]] = {}
        base_macs = None
        for module in modules:
            try:
                eager_model = _model(name, module, device, classes)
            except Exception as err:  # a module that does not fit this backbone
                print(f"(e) {name}+{module}: skipped ({type(err).__name__}: {err})")
                continue
            macs = count_costs(eager_model, (1, 3, size, size)).macs
            base_macs = base_macs or macs
            compiled_model = _model(name, module, device, classes)
            compiled_model.compile(dynamic=False)
            variants = {"eager": (eager_model, "auto"), "compiled": (compiled_model, "auto")}
            if args.unfused and module != "none":
                unfused = _model(name, module, device, classes)
                unfused.compile(dynamic=False)
                variants["unfused"] = (unfused, "never")
            first: dict[str, float] = {}
            outs: dict[str, torch.Tensor] = {}
            for kind, (model, mode) in variants.items():
                step = _step(model, x, y, device, mode)
                start = time.perf_counter()
                outs[kind] = step().detach().float()
                _sync(device)
                first[kind] = time.perf_counter() - start
                steps[(module, kind)] = step
            diff = float((outs["compiled"] - outs["eager"]).abs().max())
            info[module] = {
                "macs": macs,
                "mac_ratio": macs / base_macs,
                "compile_s": first["compiled"] - first["eager"],
                "max_abs_diff": diff,
                "logit_scale": float(outs["eager"].abs().max()),
            }
            print(
                f"(e) {name}+{module}: compiled in ~{info[module]['compile_s']:.0f} s, "
                f"max |compiled - eager| logit {diff:.2e}",
                flush=True,
            )
        times = {k: [] for k in steps}
        keys = list(steps)
        for step in steps.values():  # warm-up
            step()
        _sync(device)
        for r in range(args.steps):
            for key in keys if r % 2 == 0 else keys[::-1]:
                start = time.perf_counter()
                steps[key]()
                _sync(device)
                times[key].append(time.perf_counter() - start)

        def ratio(a: tuple[str, str], b: tuple[str, str], times: dict = times) -> float:
            return statistics.median(p / q for p, q in zip(times[a], times[b]))

        rows = []
        for module, meta in info.items():
            row = {
                "module": module,
                "eager_ms": statistics.median(times[(module, "eager")]) * 1e3,
                "compiled_ms": statistics.median(times[(module, "compiled")]) * 1e3,
                "eager_overhead": ratio((module, "eager"), ("none", "eager")),
                "compiled_overhead": ratio((module, "compiled"), ("none", "compiled")),
                "compiled_vs_eager": ratio((module, "compiled"), (module, "eager")),
                "unfused_overhead": ratio((module, "unfused"), ("none", "compiled"))
                if (module, "unfused") in times
                else None,
                **meta,
            }
            rows.append(row)
        results.setdefault("compile", {})[name] = {
            "batch": batch,
            "image_size": size,
            "rounds": args.steps,
            "device": device,
            "rows": rows,
        }
        header = [
            "module",
            "eager ms",
            "compiled ms",
            "eager overhead",
            "compiled overhead",
            "MAC ratio",
            "compiled / eager",
        ]
        if args.unfused:
            header.append("compiled overhead, unfused")
        header += ["compile s", "max abs diff"]
        lines = []
        for r in rows:
            line = [
                r["module"],
                f"{r['eager_ms']:.0f}",
                f"{r['compiled_ms']:.0f}",
                f"{r['eager_overhead']:.3f}",
                f"{r['compiled_overhead']:.3f}",
                f"{r['mac_ratio']:.4f}",
                f"{r['compiled_vs_eager']:.3f}",
            ]
            if args.unfused:
                u = r["unfused_overhead"]
                line.append("" if u is None else f"{u:.3f}")
            line += [f"{r['compile_s']:.0f}", f"{r['max_abs_diff']:.1e}"]
            lines.append(line)
        prec = "bf16 autocast" if device == "cuda" else "fp32"
        table(
            f"(e) {name}, batch {batch} at {size}x{size}, {device}, channels_last, {prec}, "
            f"train step, {args.steps} interleaved rounds",
            header,
            lines,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile-models", default="resnet20,resnet50", help="(e) backbones (comma list)"
    )
    parser.add_argument(
        "--compile-modules", default=None, help="(e) modules (default: every gate and stage)"
    )
    parser.add_argument(
        "--unfused", action="store_true", help="(e) also time compiled without attention.fused"
    )
