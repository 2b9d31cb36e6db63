"""attnexp-eval: reproduces a run's recorded test error exactly, tables a sweep, and refuses
corrupt or mismatched checkpoints with exit code 2 and a message naming the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnexp.cli.eval import main, parse_args
from attnexp.compose import compose_config
from attnexp.errors import ConfigError
from attnexp.run import train

TINY = [
    "+debug=smoke",
    "trainer.deterministic=true",
    "data.num_train=64",
    "data.num_test=80",  # 3 test batches of 32 (the last one short)
    "data.eval_batch_size=32",
    "trainer.limit_test_batches=1.0",
    "trainer.limit_val_batches=1.0",
    "trainer.max_epochs=2",
    "logger=none",
]


def _train(run_dir: Path, *overrides: str) -> dict:
    return train(compose_config([*TINY, *overrides], run_dir))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep-shaped dir: two finished runs (no attention, SE) in ``<sweep>/0`` and ``/1``."""
    root = tmp_path_factory.mktemp("sweep")
    _train(root / "0", "attention=none")
    _train(root / "1", "attention=se")
    return root


def _eval_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("eval-*.json"))


def test_run_dir_reproduces_the_recorded_test_error(sweep: Path, capsys) -> None:
    run_dir = sweep / "1"
    recorded = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert recorded["top1_err"] is not None and recorded["checkpoint"] == "best"
    main([f"checkpoint={run_dir}"])
    files = _eval_files(run_dir)
    assert len(files) >= 1
    result = json.loads(files[-1].read_text())
    assert result["top1_err"] == recorded["top1_err"]  # exactly, not approximately
    assert result["top5_err"] == recorded["top5_err"]
    assert result["loss"] == pytest.approx(recorded["loss"], rel=1e-5)
    assert result["images"] == 80 and result["split"] == "test"
    assert Path(result["checkpoint"]).name == recorded["checkpoint_file"]
    assert "top-1/top-5 err" in capsys.readouterr().out
    # a second evaluation adds a file, never replaces one
    main([f"checkpoint={run_dir}", "which=last"])
    assert len(_eval_files(run_dir)) == len(files) + 1
    assert Path(json.loads(_eval_files(run_dir)[-1].read_text())["checkpoint"]).name == "last.ckpt"


def test_overrides_change_what_is_evaluated_on(sweep: Path) -> None:
    run_dir = sweep / "0"
    main([f"checkpoint={run_dir}", "data.num_test=40", "split=test"])
    result = json.loads(_eval_files(run_dir)[-1].read_text())
    assert result["images"] == 40
    assert result["overrides"] == ["data.num_test=40"]


def test_sweep_dir_gives_one_table(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "table"
    main([f"checkpoint={sweep}", f"out={out}"])
    table = (out / "table.md").read_text()
    assert "se" in table and "none" in table
    csv_rows = (out / "table.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 3  # header + one row per run
    # a list of checkpoints works the same way
    main([f"checkpoint=[{sweep / '0'},{sweep / '1'}]", f"out={tmp_path / 'table2'}"])
    assert (tmp_path / "table2" / "table.md").read_text() == table


def test_parse_args() -> None:
    options, overrides = parse_args(["checkpoint=[a/b,c]", "which=last", "data=cifar10"])
    assert options["checkpoint"] == ["a/b", "c"] and options["which"] == "last"
    assert overrides == ["data=cifar10"]
    with pytest.raises(ConfigError, match="which checkpoint"):
        parse_args(["data=cifar10"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "attnexp.cli.eval", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"},
    )


def _copy_run(sweep: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(sweep / "0", copy)
    return copy


def test_corrupt_checkpoint_exits_2_naming_the_file(sweep: Path, tmp_path: Path) -> None:
    run_dir = _copy_run(sweep, tmp_path)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    proc = _cli(f"checkpoint={ckpt}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "last.ckpt" in proc.stderr and "corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_mismatched_checkpoints_say_what_does_not_match(sweep: Path) -> None:
    from attnexp.analysis.evaluate import evaluate

    # a module the run did not have: its keys are missing from the checkpoint
    with pytest.raises(ConfigError, match=r"best-epoch.*missing keys: layer1\.0\.attn"):
        evaluate([sweep / "0"], ["attention=se"])
    # the run had SE: without it the checkpoint's SE weights are unexpected
    with pytest.raises(ConfigError, match="unexpected keys: layer1.0.attn"):
        evaluate([sweep / "1"], ["attention=none"])
    # another class count
    with pytest.raises(ConfigError, match="class count: the checkpoint's classifier has 10"):
        evaluate([sweep / "0"], ["model.num_classes=5"])
    with pytest.raises(ConfigError, match="no such file"):
        evaluate([sweep / "nope"])
    with pytest.raises(ConfigError, match="experiment= changes how a run is trained"):
        evaluate([sweep / "0"], ["experiment=demo"])
