"""Try bad inputs on every console tool and report which are refused early and clearly.

    python scripts/bad_input_sweep.py [--jobs 2] [--only train]

For each case the command runs in a fresh temporary directory. "Rejected early with a clear
message" means: exit code 2, no traceback, the message names the expected key or value,
no run directory created, and it ended before any training (within the time limit). A
tiny run is trained first so that eval/viz/table have something to read. Prints one line
per case and the exceptions at the end; exit 0 when every case passes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RUN = "<RUN>"  # replaced by the tiny trained run dir
FILE = "<FILE>"  # replaced by a plain file
# (command, arguments, substrings the message must contain)
CASES: list[tuple[str, list[str], list[str]]] = [
    # trainer
    ("train", ["trainer.devices=0"], ["trainer.devices"]),
    ("train", ["trainer.devices=abc"], ["trainer.devices"]),
    ("train", ["trainer.num_nodes=0"], ["trainer.num_nodes"]),
    ("train", ["trainer.strategy=foo"], ["trainer.strategy", "ddp"]),
    ("train", ["trainer.precision=16"], ["trainer.precision"]),
    ("train", ["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches"]),
    ("train", ["trainer.log_every_n_steps=0"], ["trainer.log_every_n_steps"]),
    ("train", ["trainer.limit_train_batches=1.5"], ["trainer.limit_train_batches"]),
    ("train", ["trainer.val_check_interval=0"], ["trainer.val_check_interval"]),
    ("train", ["trainer.max_steps=0"], ["trainer.max_steps"]),
    ("train", ["trainer.gradient_clip_algorithm=l2"], ["norm", "value"]),
    ("train", ["trainer.deterministic=maybe"], ["trainer.deterministic"]),
    ("train", ["+trainer.max_epoch=3"], ["trainer.max_epoch", "max_epochs"]),
    ("train", ["trainer.max_epoch=3"], ["trainer.max_epoch", "max_epochs"]),
    ("train", ["+trainer.callbacks=[]"], ["trainer.callbacks"]),
    ("train", ["trainer.precision=16-mixed"], ["trainer.precision", "32-true"]),
    ("train", ["trainer.devices=64"], ["trainer.devices"]),
    # scheduler
    ("train", ["scheduler.name=linear"], ["scheduler.name", "cosine"]),
    ("train", ["scheduler.unit=epochs"], ["scheduler.unit", "epoch"]),
    ("train", ["scheduler.warmup=-1"], ["scheduler.warmup"]),
    ("train", ["scheduler.warmup_start=2"], ["scheduler.warmup_start"]),
    ("train", ["scheduler=onecycle", "scheduler.pct_start=1.5"], ["scheduler.pct_start"]),
    (
        "train",
        ["scheduler=multistep", "scheduler.milestones=[6,3]"],
        ["scheduler.milestones", "increase"],
    ),
    ("train", ["scheduler=multistep", "scheduler.gamma=0"], ["scheduler.gamma"]),
    ("train", ["+scheduler.warmup_epochs=5"], ["scheduler.warmup_epochs", "scheduler.warmup"]),
    # optimizer
    ("train", ["optimizer.lr=-0.1"], ["optimizer.lr", "> 0"]),
    ("train", ["optimizer.lr=abc"], ["optimizer.lr"]),
    ("train", ["optimizer.weight_decay=-1"], ["optimizer.weight_decay"]),
    ("train", ["optimizer.momentum=1.5"], ["optimizer.momentum"]),
    ("train", ["optimizer.momentum=0"], ["optimizer.nesterov"]),
    ("train", ["optimizer._target_=torch.optim.Foo"], ["optimizer._target_"]),
    ("train", ["optimizer=adamw", "optimizer.betas=[0.9]"], ["optimizer.betas"]),
    ("train", ["optimizer=adamw", "+optimizer.momentum=0.9"], ["optimizer.momentum", "AdamW"]),
    # data
    ("train", ["data.batch_size=0"], ["data.batch_size"]),
    ("train", ["data.eval_batch_size=-5"], ["data.eval_batch_size"]),
    ("train", ["data.image_size=4"], ["data.image_size"]),
    ("train", ["data.storage=gpu"], ["data.storage", "device"]),
    ("train", ["data.pad=-1"], ["data.pad"]),
    ("train", ["data=cifar10", "data.val_size=60000"], ["data.val_size"]),
    ("train", ["data=cifar10", "data.image_size=64"], ["data.image_size", "32"]),
    ("train", ["data=cifar10", "data.mean=[0.5,0.5]"], ["data.mean"]),
    ("train", ["data=imagefolder", "data.recipe=coco"], ["data.recipe", "imagenet"]),
    ("train", ["data=imagefolder", "data.in_memory=maybe"], ["data.in_memory"]),
    ("train", ["data=imagefolder", "data.rrc_scale=[0.5]"], ["data.rrc_scale"]),
    ("train", ["data=imagefolder", f"data.root={FILE}"], ["data.root", "is a file"]),
    ("train", ["data.name=mnist"], ["data.name", "synthetic"]),
    ("train", ["data=mnist"], ["data=mnist", "cifar10"]),
    ("train", ["data.num_classes=5"], ["data.num_classes"]),
    ("train", ["+data.num_workers=2"], ["data.num_workers", "imagefolder"]),
    # model
    ("train", ["model.num_classes=7"], ["model.num_classes", "data.num_classes"]),
    ("train", ["model.shortcut=C"], ["model.shortcut", "A", "B"]),
    ("train", ["model=resnet50", "model.stride_position=v2"], ["model.stride_position"]),
    ("train", ["model=resnet50", "+model.shortcut=A"], ["model.shortcut"]),
    ("train", ["model=wrn16_8", "model.dropout=1.5"], ["model.dropout"]),
    ("train", ["model=resnet51"], ["model=resnet51", "resnet50"]),
    # placement / attention / conv
    ("train", ["attention=bam", "placement.blocks=last"], ["placement.blocks"]),
    ("train", ["attention=bam", "placement.stages=[3]"], ["placement.stages"]),
    (
        "train",
        ["attention=eca", "+placement.stage_options={k_size:[3,5]}"],
        ["placement.stage_options"],
    ),
    ("train", ["attention=se", "+attention.reducton=8"], ["reducton", "reduction"]),
    ("train", ["attention=sk", "placement.position=after_conv3"], ["placement.position"]),
    ("train", ["attention.name=foo"], ["attention.name", "cbam"]),
    ("train", ["attention=foo"], ["attention=foo", "cbam"]),
    ("train", ["conv=se"], ["conv=se"]),
    ("train", ["extra_placements=[{module: se, position: bogus}]"], ["position"]),
    ("train", ["placement.blocks=[7]"], ["placement.blocks"]),
    # callbacks / logger / launcher
    ("train", ["callbacks.ema.every_n_steps=0"], ["callbacks.ema.every_n_steps"]),
    ("train", ["callbacks.checkpoint.mode=maximum"], ["callbacks.checkpoint.mode", "max"]),
    ("train", ["callbacks.checkpoint.save_top_k=-2"], ["callbacks.checkpoint.save_top_k"]),
    ("train", ["+callbacks.ema.decya=0.9"], ["callbacks.ema.decya", "decay"]),
    ("train", ["callbacks.precise_bn.num_batches=0"], ["callbacks.precise_bn.num_batches"]),
    ("train", ["logger=wandb", "logger.wandb.mode=sometimes"], ["logger.wandb.mode"]),
    ("train", ["logger=tensorboard"], ["logger=tensorboard", "csv"]),
    ("train", ["launcher=joblib", "hydra.launcher.n_jobs=0"], ["n_jobs"]),
    ("train", ["launcher=pbs"], ["launcher=pbs", "slurm"]),
    # paths and top level
    ("train", ["paths.root=''"], ["paths.root"]),
    ("train", [f"paths.root={FILE}/out"], ["paths.root", "is a file"]),
    ("train", ["experiment_name=a/b"], ["experiment_name"]),
    ("train", ["test=maybe"], ["test"]),
    ("train", ["tags=notalist"], ["tags"]),
    ("train", ["seed=1.5"], ["seed"]),
    ("train", ["training.base_batch_size=0"], ["training.base_batch_size"]),
    ("train", ["training.channels_last=sometimes"], ["training.channels_last"]),
    ("train", ["training.nonfinite_check_every=0"], ["training.nonfinite_check_every"]),
    ("train", ["imports=[no_such_module_xyz]"], ["no_such_module_xyz"]),
    ("train", ["+debug=nonexistent"], ["debug", "smoke"]),
    ("train", ["resume=/nonexistent/run"], ["/nonexistent/run"]),
    # profile
    ("profile", ["model=resnet51", "--no-speed"], ["model=resnet51", "resnet50"]),
    ("profile", ["attention=foo", "--no-speed"], ["attention=foo"]),
    ("profile", ["attention=se", "placement.stages=[9]", "--no-speed"], ["stages"]),
    ("profile", ["--device", "tpu"], ["--device"]),
    ("profile", ["trainer.max_epoch=3", "--no-speed"], ["trainer.max_epoch"]),
    # table
    ("table", ["/nonexistent/sweep"], ["/nonexistent/sweep"]),
    ("table", ["."], ["no"]),
    ("table", [RUN, "--metric", "foo"], ["foo"]),
    # viz
    ("viz", ["checkpoint=/nonexistent/run"], ["/nonexistent/run"]),
    ("viz", ["curves=/nonexistent/run"], ["/nonexistent/run"]),
    ("viz", [f"checkpoint={RUN}", "n=0"], ["n"]),
    ("viz", [f"checkpoint={RUN}", "maps=bogus"], ["maps"]),
    ("viz", [f"checkpoint={RUN}", "which=middle"], ["which"]),
    # eval
    ("eval", ["checkpoint=/nonexistent/run"], ["/nonexistent/run"]),
    ("eval", [f"checkpoint={RUN}", "which=middle"], ["which"]),
    ("eval", [f"checkpoint={RUN}", "split=holdout"], ["split"]),
    ("eval", [f"checkpoint={RUN}", "data.eval_batch_size=0"], ["data.eval_batch_size"]),
    ("eval", [f"checkpoint={FILE}"], [FILE]),
]
MODULES = {
    "train": "attnexp.cli.train",
    "profile": "attnexp.cli.profile",
    "table": "attnexp.cli.table",
    "viz": "attnexp.cli.viz",
    "eval": "attnexp.cli.eval",
}
TIME_LIMIT = 240


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def train_tiny(where: Path) -> Path:
    out = subprocess.run(
        [sys.executable, "-m", MODULES["train"], "+debug=smoke", "callbacks.progress=null"],
        cwd=where,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        raise SystemExit(f"could not train the tiny run:\n{out.stdout}\n{out.stderr}")
    runs = sorted(where.glob("outputs/*/runs/*"))
    return runs[-1]


def run_case(case: tuple[str, list[str], list[str]], run: Path, file: Path) -> dict:
    command, args, words = case
    args = [a.replace(RUN, str(run)).replace(FILE, str(file)) for a in args]
    words = [w.replace(RUN, str(run)).replace(FILE, str(file)) for w in words]
    with tempfile.TemporaryDirectory(prefix="attnexp-bad-") as tmp:
        start = time.time()
        try:
            out = subprocess.run(
                [sys.executable, "-m", MODULES[command], *args],
                cwd=tmp,
                env=_env(),
                capture_output=True,
                text=True,
                timeout=TIME_LIMIT,
            )
            code, text = out.returncode, out.stdout + out.stderr
        except subprocess.TimeoutExpired:
            code, text = None, "timed out (it was training?)"
        created = (Path(tmp) / "outputs").exists()
    seconds = time.time() - start
    reasons = []
    if code != 2:
        reasons.append(f"exit {code}")
    if "Traceback" in text:
        reasons.append("traceback")
    missing = [w for w in words if w not in text]
    if missing:
        reasons.append(f"message lacks {missing}")
    if created and command == "train":
        reasons.append("created outputs/")
    message = next(
        (ln.strip() for ln in text.splitlines() if "error" in ln.lower() or "usage" in ln.lower()),
        text.strip().splitlines()[-1] if text.strip() else "",
    )
    return {
        "command": f"attnexp-{command} {' '.join(args)}",
        "ok": not reasons,
        "reasons": reasons,
        "seconds": seconds,
        "message": message[:240],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", choices=sorted(MODULES), help="one command's cases")
    args = parser.parse_args()
    cases = [c for c in CASES if args.only is None or c[0] == args.only]
    work = Path(tempfile.mkdtemp(prefix="attnexp-sweep-"))
    try:
        file = work / "a_file.ckpt"
        file.write_text("not a checkpoint, not a folder\n")
        needs_run = any(RUN in " ".join(c[1]) for c in cases)
        run = train_tiny(work) if needs_run else work / "no-run"
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda c: run_case(c, run, file), cases))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in results:
        mark = "ok  " if r["ok"] else "FAIL"
        print(f"{mark} {r['seconds']:5.1f}s  {r['command']}\n        {r['message']}")
    failed = [r for r in results if not r["ok"]]
    per_command: dict[str, list[int]] = {}
    for r in results:
        name = r["command"].split()[0]
        per_command.setdefault(name, [0, 0])
        per_command[name][0] += r["ok"]
        per_command[name][1] += 1
    print(
        f"\n{len(results) - len(failed)} of {len(results)} bad inputs rejected early with a "
        "clear message (exit 2, no traceback, key named, nothing created)"
    )
    for name, (ok, total) in sorted(per_command.items()):
        print(f"  {name}: {ok}/{total}")
    for r in failed:
        print(f"  EXCEPTION {r['command']}: {', '.join(r['reasons'])}\n      {r['message']}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
