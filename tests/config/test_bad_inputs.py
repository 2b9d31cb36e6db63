"""Every bad input of issue 17 is refused before training, naming the key and what is valid.

In-process: :func:`check_config` on the composed config (what ``attnexp-train`` runs before
seeding, before data and before the run dir). Through the console tools: exit code 2, one
message, no traceback, no run directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnexp.compose import compose_config
from attnexp.validation import ConfigProblems, check_config

NO_GPU = not torch.cuda.is_available()

# (overrides, key the message names, words of the valid values it must contain)
CASES = [
    (["placement.position=after_conv4"], "placement.position", ["after_conv3", "between_stages"]),
    (["placement.stages=[5]"], "placement.stages", ["valid stages: 1, 2, 3"]),
    (["placement.stages=[0]"], "placement.stages", ["1-based"]),
    (["placement.blocks=every_0"], "placement.blocks", ["every_K (K >= 1)"]),
    (["attention=se", "placement.stages=[5]"], "placement.stages", ["valid stages: 1, 2, 3"]),
    (["trainer.max_epochs=0"], "trainer.max_epochs", ["an integer >= 1"]),
    (["trainer.max_epochs=-1"], "trainer.max_epochs", ["trainer.max_steps >= 1"]),
    (["scheduler.final_lr_ratio=-1"], "scheduler.final_lr_ratio", ["in [0.0, 1.0]"]),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val", ["null or", ">= 0"]),
    (["+ckpt_path=last.ckpt"], "ckpt_path", ["did you mean `resume`", "valid keys"]),
    (["+data.num_workers=-2"], "data.num_workers", ["data=imagefolder", "valid keys"]),
    (["data=imagefolder", "+data.num_workers=-2"], "data.num_workers", [">= 0"]),
    (["data.batch_size=100000"], "data.batch_size", ["5000 training images", "<= 5000"]),
    (["data.num_train=3"], "data.num_train", ["10 classes", ">= 10"]),
    (["seed=abc"], "seed", ["[0, 4294967295]"]),
    (["seed=-1"], "seed", ["[0, 4294967295]"]),
    (["training.label_smoothing=2.0"], "training.label_smoothing", ["[0.0, 1.0)"]),
    (["optimizer.lr=inf"], "optimizer.lr", ["finite number > 0"]),
    (["trainer.precision=fp8"], "trainer.precision", ["bf16-mixed", "32-true"]),
    (
        ["callbacks.ema.decay=1.5", "callbacks.ema.enabled=true"],
        "callbacks.ema.decay",
        ["(0.0, 1.0)"],
    ),
    (["scheduler=multistep", "scheduler.milestones=[5,20]"], "scheduler.milestones", ["< 10"]),
    (["scheduler.warmup=10"], "scheduler.warmup", ["< 10"]),
]


def _problems(overrides: list[str], tmp_path: Path) -> ConfigProblems:
    out = tmp_path / "run"
    cfg = compose_config(overrides, out)
    with pytest.raises(ConfigProblems) as info:
        check_config(cfg)
    assert not out.exists(), "a refused config must not create its run dir"
    return info.value


@pytest.mark.parametrize(("overrides", "key", "valid"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_refused_naming_key_and_valid_values(overrides, key, valid, tmp_path: Path) -> None:
    err = _problems(overrides, tmp_path)
    problem = next((p for p in err.problems if p.key == key), None)
    assert problem is not None, f"no problem for {key}: {err}"
    assert f"`{key}" in problem.message
    for words in valid:
        assert words in problem.message, (words, problem.message)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    err = _problems(
        ["seed=-1", "optimizer.lr=inf", "trainer.max_epochs=0", "+ckpt_path=x", "data.pad=-1"],
        tmp_path,
    )
    assert {"seed", "optimizer.lr", "trainer.max_epochs", "ckpt_path", "data.pad"} <= set(err.keys)
    # data.shuffle_seed copies ${seed}: reported once, under seed
    assert "data.shuffle_seed" not in err.keys


@pytest.mark.skipif(not NO_GPU, reason="checks the refusal on a machine without a GPU")
def test_gpu_asked_without_gpu(tmp_path: Path) -> None:
    err = _problems(["trainer.accelerator=gpu"], tmp_path)
    assert err.keys == ["trainer.accelerator"] and "no CUDA" in str(err)


def test_data_root_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "data.tar"
    file.write_text("not a folder")
    err = _problems(["data=imagefolder", f"data.root={file}"], tmp_path)
    assert "data.root" in err.keys and "is a file, not a directory" in str(err)


def test_output_root_under_a_file(tmp_path: Path) -> None:
    file = tmp_path / "blocker"
    file.write_text("")
    cfg = compose_config([], file / "run")
    with pytest.raises(ConfigProblems) as info:
        check_config(cfg)
    assert info.value.keys == ["paths.output_dir"] and str(file) in str(info.value)


def test_valid_config_passes(tmp_path: Path) -> None:
    check_config(compose_config(["attention=cbam", "scheduler=onecycle"], tmp_path / "run"))


# --------------------------------------------------------------------------- CLI
def _run(module: str, *args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        **kw,
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["model=resnet51"], ["model=resnet51", "resnet50", "did you mean"]),
        (["trainer.max_epoch=3"], ["trainer.max_epoch", "did you mean `trainer.max_epochs`"]),
        (["a=b=c"], ["cannot parse the override `a=b=c`"]),
        (["seed=abc", "trainer.max_epochs=0"], ["`seed=abc`", "`trainer.max_epochs=0`"]),
    ],
    ids=["unknown-option", "unknown-key", "bad-syntax", "schema"],
)
def test_train_cli_exit_2_without_traceback(args, words, tmp_path: Path) -> None:
    out = _run("attnexp.cli.train", *args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    for w in words:
        assert w in out.stderr, (w, out.stderr)
    assert not (tmp_path / "outputs").exists(), "nothing may be created for a refused config"


def test_profile_unknown_model_exit_2(tmp_path: Path) -> None:
    out = _run("attnexp.cli.profile", "model=resnet51", "--no-speed", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "model=resnet51" in out.stderr
    assert "resnet50" in out.stderr


def test_sweep_lists_each_failed_job_in_one_line(tmp_path: Path) -> None:
    out = _run(
        "attnexp.cli.train", "-m", "+debug=smoke", "seed=-1,abc", "logger=none", cwd=tmp_path
    )
    assert out.returncode == 2, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "Traceback" not in text
    assert "2 run(s) failed" in text
    assert "`seed=-1`" in text and "`seed=abc`" in text


def _make_read_only(path: Path) -> bool:
    """chmod 0555; as root (which ignores modes) the immutable flag instead."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return True
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def test_read_only_output_root_exit_2(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    if not _make_read_only(root):
        pytest.skip("cannot make a directory read-only here (root without chattr)")
    try:
        out = _run("attnexp.cli.train", f"paths.root={root / 'outputs'}", cwd=tmp_path)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(root)], check=True)
        root.chmod(0o755)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert str(root) in out.stderr and ("EACCES" in out.stderr or "EROFS" in out.stderr)
    assert not (root / "outputs").exists()


def test_milestones_all_beyond_the_run_warn_and_partly_beyond_refuse(tmp_path, caplog) -> None:
    """A smoke run of a 90-epoch preset (every milestone beyond the end) keeps a constant lr
    and says so; a milestone list that is cut in the middle is refused naming the key."""
    from attnexp.compose import compose_config
    from attnexp.validation import find_problems

    short = compose_config(["scheduler=multistep", "scheduler.milestones=[30,60]"], tmp_path / "a")
    with caplog.at_level("WARNING"):
        assert [p.key for p in find_problems(short, environment=False)] == []
    assert "learning rate stays constant" in caplog.text
    cut = compose_config(["scheduler=multistep", "scheduler.milestones=[5,20]"], tmp_path / "b")
    assert [p.key for p in find_problems(cut, environment=False)] == ["scheduler.milestones"]
