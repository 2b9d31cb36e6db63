"""Dashboard names of a run: the sweep is the group, the swept values + seed the name."""

from __future__ import annotations

from pathlib import Path

from attnexp.results import run_names
from attnexp.results.names import swept_keys

MULTIRUN = """hydra:
  sweeper:
    params:
      variant: glob(cbam_table3/*)
  overrides:
    task:
    - attention=se,none
    - optimizer.lr=0.1,0.05
    - scheduler.lr=0.1
    - seed=0,1
    - +debug=smoke
"""


def test_swept_keys_come_from_multirun_yaml(tmp_path: Path) -> None:
    (tmp_path / "multirun.yaml").write_text(MULTIRUN)
    assert swept_keys(tmp_path) == ["variant", "attention", "optimizer.lr", "seed"]
    assert swept_keys(tmp_path / "nope") is None and swept_keys(None) is None


def test_names_in_a_sweep_are_unique_and_tagged(tmp_path: Path) -> None:
    sweep = tmp_path / "2026-01-01_00-00-00_1"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(MULTIRUN)
    names = []
    for att in ("se", "none"):
        for lr in ("0.1", "0.05"):
            for seed in (0, 1):
                overrides = [f"attention={att}", f"optimizer.lr={lr}", "scheduler.lr=0.1"]
                got = run_names(
                    "exp",
                    [*overrides, f"seed={seed}", "+debug=smoke"],
                    seed=seed,
                    sweep_dir=sweep,
                    model="resnet20",
                    attention=att,
                    dataset="synthetic",
                )
                assert got.group == "exp/2026-01-01_00-00-00_1" and got.job_type == "train"
                assert got.tags[:2] == [f"attention={att}", f"optimizer.lr={lr}"]
                assert "resnet20" in got.tags and not any("scheduler" in t for t in got.tags)
                names.append(got.name)
    assert len(set(names)) == 8
    assert "attention=se,lr=0.05,s1" in names  # optimizer.lr shortened: unambiguous


def test_ambiguous_keys_stay_long_and_sweep_name_wins(tmp_path: Path) -> None:
    got = run_names(
        "exp",
        ["optimizer.lr=0.1", "scheduler.lr=0.2", "seed=3"],
        seed=3,
        swept=["optimizer.lr", "scheduler.lr"],
        sweep_name="my-ablation",
    )
    assert got.name == "optimizer.lr=0.1,scheduler.lr=0.2,s3" and got.group == "my-ablation"


def test_a_single_run_is_named_by_what_it_is() -> None:
    got = run_names("exp", ["data=synthetic"], seed=0, model="resnet20", attention="se")
    assert got.name == "resnet20-se,s0" and got.group == "exp"
