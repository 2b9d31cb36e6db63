"""Every documented exit code of the console tools, in a real subprocess, with its message.

Documented (attnexp/cli/*.py, docs/training.md): 0 done; 1 a run failed while training (a
NaN/inf loss: the message, no traceback); 2 a mistake in the command or config (one short
message naming the key or path, no traceback); 143 stopped by SIGTERM with last.ckpt saved.
143 is tested with a real signal in
tests/training/test_training_resume.py::test_sigterm_saves_last_checkpoint_and_exits.

All commands start at once (module fixture) and are checked one per test: each is a fresh
Python importing torch and Lightning, so running them side by side halves the wall time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

TINY = ["+debug=smoke", "callbacks.progress=null", "trainer.deterministic=true"]


@dataclass(frozen=True)
class Case:
    command: str  # console script
    args: tuple[str, ...]
    code: int
    words: tuple[str, ...]  # all must appear in the output (case-insensitive)


CASES: dict[str, Case] = {
    # attnexp-train: config errors of several kinds
    "train-bad-option-value": Case(
        "attnexp-train",
        ("attention=se", "attention.reduction=0", *TINY),
        2,
        ("config error", "reduction"),
    ),
    "train-unknown-group-option": Case(  # Hydra's composition error
        "attnexp-train", ("attention=no_such_module", *TINY), 2, ("no_such_module",)
    ),
    "train-unknown-key": Case(
        "attnexp-train",
        ("+training.label_smothing=0.1", *TINY),
        2,
        ("config error", "label_smothing"),
    ),
    "train-unknown-model": Case(
        "attnexp-train", ("model.name=resnet_nope", *TINY), 2, ("config error", "resnet_nope")
    ),
    "train-missing-resume": Case(
        "attnexp-train", ("resume=/nonexistent/attnexp-run", *TINY), 2, ("config error", "resume=")
    ),
    # a run that fails while training: lr 1e8 makes the loss NaN/inf within two steps
    "train-nan": Case(
        "attnexp-train",
        (*TINY, "optimizer.lr=1e8", "training.nonfinite_check_every=1", "trainer.max_epochs=3"),
        1,
        ("NonFiniteLossError", "NaN/inf"),
    ),
    "profile-unknown-model": Case(
        "attnexp-profile", ("model=no_such_model",), 2, ("no_such_model",)
    ),
    "profile-unknown-model-name": Case(
        "attnexp-profile", ("model.name=no_such_model",), 2, ("config error", "no_such_model")
    ),
    "table-missing-dir": Case(
        "attnexp-table", ("/nonexistent/attnexp-sweep",), 2, ("/nonexistent/attnexp-sweep",)
    ),
    "viz-missing-checkpoint": Case(
        "attnexp-viz",
        ("checkpoint=/nonexistent/attnexp-run",),
        2,
        ("config error", "/nonexistent/attnexp-run"),
    ),
    "viz-bad-argument": Case("attnexp-viz", ("not_a_key_value",), 2, ("not_a_key_value",)),
    "eval-missing-checkpoint": Case(
        "attnexp-eval",
        ("checkpoint=/nonexistent/attnexp-run",),
        2,
        ("config error", "/nonexistent/attnexp-run"),
    ),
}


def _command(name: str) -> list[str]:
    """The installed console script next to this interpreter (what users run)."""
    script = Path(sys.executable).parent / name
    assert script.is_file(), f"{name} is not installed next to {sys.executable}"
    return [str(script)]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    root = tmp_path_factory.mktemp("exit-codes")
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, case in CASES.items():
        cwd = root / name
        cwd.mkdir()
        args = list(case.args)
        if case.command == "attnexp-train":
            args.append(f"hydra.run.dir={cwd / 'run'}")
        procs[name] = subprocess.Popen(
            [*_command(case.command), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    out = {}
    for name, proc in procs.items():
        text, _ = proc.communicate(timeout=900)
        out[name] = (proc.returncode, text)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_exit_code_and_message(name: str, results: dict[str, tuple[int, str]]) -> None:
    case = CASES[name]
    code, out = results[name]
    shown = f"$ {case.command} {' '.join(case.args)}\n{out[-3000:]}"
    assert code == case.code, f"exit {code}, documented {case.code}:\n{shown}"
    missing = [w for w in case.words if w.lower() not in out.lower()]
    assert not missing, f"message lacks {missing}:\n{shown}"
    assert "Traceback" not in out, f"a traceback instead of a message:\n{shown}"
