"""attnexp-table on fabricated run records: grouping, baselines, the Welch interval, published
numbers, flagged failures, refusal to overwrite, --latest, wandb offline."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from exp_support import write_run
from scipy import stats

from attnexp.analysis.table import build_table, collect_wandb, welch_ci
from attnexp.cli.table import OUTPUT_FILES, latest_sweep, run
from attnexp.errors import ConfigError

T3 = {
    "reference": "cbam_table3",
    "baseline": {"variant": "cbam_table3/baseline"},
    "protocol": "from_scratch",
}
LABELS = {
    "baseline": "baseline (no attention)",
    "se": "channel only (SE)",
    "channel_first": "channel -> spatial (CBAM)",
    "spatial_first": "spatial -> channel",
    "parallel": "channel & spatial in parallel",
}
ERRORS = {  # top-1 per seed
    "baseline": [30.0, 31.0, 29.5],
    "se": [29.0, 29.4, 28.8],
    "channel_first": [27.0, 27.5, 26.9],
    "spatial_first": [29.9, 31.2, 30.1],
    "parallel": [28.0],  # one seed only: no interval
}


def _sweep(root: Path, errors: dict[str, list[float]] = ERRORS) -> Path:
    sweep = root / "multirun" / "2026-01-01_00-00-00-000000_1"
    job = 0
    for variant, values in errors.items():
        for seed, top1 in enumerate(values):
            write_run(
                sweep / str(job),
                [f"variant=cbam_table3/{variant}", "experiment=cbam_table3_cifar"],
                seed=seed,
                top1=top1,
                top5=top1 / 4,
                table={**T3, "row": variant, "label": LABELS[variant]},
                job_num=job,
            )
            job += 1
    return sweep


def test_welch_interval_matches_a_hand_computation() -> None:
    a, b = [5.0, 6.0, 7.5], [4.0, 4.5]
    ma, mb = sum(a) / 3, sum(b) / 2
    va = sum((x - ma) ** 2 for x in a) / 2
    vb = sum((x - mb) ** 2 for x in b) / 1
    se = math.sqrt(va / 3 + vb / 2)
    df = (va / 3 + vb / 2) ** 2 / ((va / 3) ** 2 / 2 + (vb / 2) ** 2 / 1)
    half = stats.t.ppf(0.975, df) * se
    ci = welch_ci(a, b)
    assert ci is not None
    assert ci.diff == pytest.approx(ma - mb)
    assert ci.df == pytest.approx(df)
    assert (ci.low, ci.high) == pytest.approx((ma - mb - half, ma - mb + half))
    # the same interval as scipy's Welch t-test
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high))
    assert not ci.excludes_zero  # wide with 2-3 seeds
    assert welch_ci([1.0], [2.0, 3.0]) is None and welch_ci([1.0, 2.0], [3.0]) is None
    tight = welch_ci([10.0, 10.1, 10.2], [12.0, 12.1, 11.9])
    assert tight is not None and tight.excludes_zero and tight.high < 0


def test_rows_grouped_by_variant_with_baseline_ci_and_paper(tmp_path: Path) -> None:
    table = build_table([_sweep(tmp_path)])
    rows = {r.setting["variant"].split("/")[1]: r for r in table.rows}
    assert list(rows) == list(ERRORS)  # sweep order, seeds merged
    assert [r.label for r in table.rows] == [LABELS[v] for v in ERRORS]
    base, cbam, par = rows["baseline"], rows["channel_first"], rows["parallel"]
    assert base.is_baseline and base.verdict == "baseline"
    assert cbam.n == 3 and cbam.top1.mean == pytest.approx(
        statistics.fmean(ERRORS["channel_first"])
    )
    assert cbam.top1.std == pytest.approx(statistics.stdev(ERRORS["channel_first"]))
    assert cbam.delta_top1 == pytest.approx(
        statistics.fmean(ERRORS["channel_first"]) - statistics.fmean(ERRORS["baseline"])
    )
    assert cbam.ci == welch_ci(ERRORS["channel_first"], ERRORS["baseline"])
    assert cbam.verdict == "yes"
    assert rows["spatial_first"].verdict == "no"
    assert par.n == 1 and par.ci is None and par.verdict == "n/a"
    # published numbers (ImageNet) beside ours, with the paper's own delta
    assert cbam.ref_row.top1_err == 22.66 and cbam.ref_row.top5_err == 6.31
    assert cbam.ref_delta_top1 == pytest.approx(22.66 - 24.56)
    assert par.ref_row.top1_err == 22.95 and rows["se"].ref_row.top1_err == 23.14
    md = table.to_markdown()
    assert "paper top-1 [ImageNet]" in md and "22.66" in md and "27.13 ± 0.32 (3)" in md
    assert "Welch" in md and "n/a (n<2)" in md
    assert "ImageNet numbers beside a different dataset" in md
    records = table.records()  # plain data for notebooks
    assert records[2]["label"] == LABELS["channel_first"] and records[2]["n"] == 3
    assert records[2]["beyond_seed_noise"] == "yes" and records[2]["paper_top1_err"] == 22.66
    csv_text = table.to_csv()
    assert csv_text.splitlines()[0].startswith("label,setting,n,")
    tex = table.to_latex()
    assert (
        r"\toprule" in tex
        and r"$\pm$" in tex
        and r"channel \& spatial" in tex
        and r"$\rightarrow$" in tex
    )


def test_failed_and_missing_runs_are_flagged_not_dropped(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, {"baseline": [30.0, 31.0], "se": [29.0, 29.4]})
    # one run failed (metrics.json with status failed), one never wrote metrics.json
    write_run(
        sweep / "4",
        ["variant=cbam_table3/se", "experiment=cbam_table3_cifar"],
        seed=2,
        top1=None,
        status="failed",
        table={**T3, "row": "se", "label": LABELS["se"]},
    )
    (sweep / "5" / ".hydra").mkdir(parents=True)
    (sweep / "5" / ".hydra" / "overrides.yaml").write_text(
        "- variant=cbam_table3/baseline\n- experiment=cbam_table3_cifar\n- seed=2\n"
    )
    (sweep / "5" / ".hydra" / "config.yaml").write_text(
        "seed: 2\ntable: {reference: cbam_table3, row: baseline, label: baseline (no attention)}\n"
    )
    table = build_table([sweep])
    rows = {r.setting["variant"]: r for r in table.rows}
    assert len(table.rows) == 2  # both problems joined their rows
    se, base = rows["cbam_table3/se"], rows["cbam_table3/baseline"]
    assert se.n == 2 and se.counts == {"completed": 2, "failed": 1}
    assert base.n == 2 and base.counts == {"completed": 2, "missing": 1}
    md = table.to_markdown()
    assert "2 ⚠ 1 failed" in md and "2 ⚠ 1 missing" in md
    assert "FAILED" in md and "RuntimeError: loss is NaN" in md and "MISSING" in md
    assert str(sweep / "5") in md


def test_jobs_that_never_started_are_flagged(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, {"baseline": [30.0], "se": [29.0]})
    (sweep / "multirun.yaml").write_text(
        "hydra:\n"
        "  sweeper:\n"
        "    params:\n"
        "      variant: cbam_table3/baseline,cbam_table3/se\n"
        "  overrides:\n"
        "    task:\n"
        "    - experiment=cbam_table3_cifar\n"
        "    - seed=0,1\n"
    )
    table = build_table([sweep])
    statuses = sorted(r.status for row in table.rows for r in row.runs)
    assert statuses == ["completed", "completed", "not_started", "not_started"]
    assert "not started" in table.to_markdown()


def test_adhoc_sweep_without_presets(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    for i, (att, top1) in enumerate([("none", 10.0), ("none", 11.0), ("se", 9.0), ("se", 9.5)]):
        write_run(sweep / str(i), [f"attention={att}", "+debug=smoke"], seed=i % 2, top1=top1)
    table = build_table([sweep])
    assert [r.label for r in table.rows] == ["none", "se"]  # the varying value
    assert table.rows[0].is_baseline and table.rows[1].baseline is table.rows[0]
    assert "paper" not in " ".join(table.columns())


def test_cli_writes_files_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    root = tmp_path / "outputs" / "cbam_table3_cifar"
    older = _sweep(root)
    newer = older.parent / "2026-02-01_00-00-00-000000_2"
    write_run(newer / "0", ["attention=none"], seed=0, top1=12.0)
    assert latest_sweep(root) == newer and latest_sweep(root / "multirun") == newer
    run([str(root / "multirun"), "--latest"])
    for name in OUTPUT_FILES:
        assert (newer / name).stat().st_size > 0
    assert not (older / "table.md").exists()
    with pytest.raises(FileExistsError, match="refusing to overwrite") as err:
        run([str(older), "--out", str(newer)])
    assert all(str(newer / n) in str(err.value) for n in OUTPUT_FILES)
    before = (newer / "table.md").read_text()
    run([str(older), "--out", str(newer), "--force"])
    assert (newer / "table.md").read_text() != before
    with pytest.raises(ConfigError, match="--out"):
        run([str(older), str(newer)])
    run([str(older), str(newer), "--no-save"])
    assert "Welch" in capsys.readouterr().out


def test_cli_exit_codes(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, {"baseline": [30.0]})
    cmd = [sys.executable, "-m", "attnexp.cli.table", str(sweep)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and "refusing to overwrite" in second.stderr
    missing = subprocess.run(
        [*cmd[:-1], str(tmp_path / "nope")], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_wandb_offline_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no stored login
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # and nothing listens there
    with pytest.raises(ConfigError, match="network access") as err:
        collect_wandb("someone/attnexp", "cbam_table3_cifar")
    assert "wandb login" in str(err.value)
    assert "pass the run or sweep directories instead" in str(err.value)
    with pytest.raises(ConfigError, match="--out"):  # nothing reached: refused before the API
        run(["--wandb", "someone/attnexp", "--group", "g"])


def test_wandb_runs_are_read_like_run_directories(monkeypatch) -> None:
    import wandb

    class FakeRun:
        def __init__(self, i: int, variant: str, seed: int, top1: float, state: str = "finished"):
            self.id, self.state = f"run{i}", state
            self.summary = {"test/top1_err": top1, "test/top5_err": top1 / 4, "costs/params": 10}
            table = {**T3, "row": variant, "label": LABELS[variant]}
            self.config = {
                "config": {
                    "seed": seed,
                    "model": {"name": "resnet164"},
                    "attention": {"name": "cbam"},
                    "data": {"name": "cifar100"},
                    "table": table,
                }
            }

        def file(self, name: str):
            raise ValueError(f"{name} was not uploaded")

    runs = [
        FakeRun(0, "baseline", 0, 30.0),
        FakeRun(1, "baseline", 1, 31.0),
        FakeRun(2, "parallel", 0, 28.0),
        FakeRun(3, "parallel", 1, 28.4),
        FakeRun(4, "parallel", 2, 0.0, state="crashed"),
    ]

    class FakeApi:
        def __init__(self, timeout: int | None = None) -> None:
            pass

        def runs(self, path: str, filters: dict | None = None) -> list[FakeRun]:
            assert path == "me/attnexp" and filters == {"group": "cbam_table3_cifar"}
            return runs

    monkeypatch.setattr(wandb, "Api", FakeApi)
    table = build_table(collect_wandb("me/attnexp", "cbam_table3_cifar"))
    base, par = table.rows
    assert base.label == LABELS["baseline"] and base.is_baseline
    assert par.baseline is base and par.n == 2 and par.counts == {"completed": 2, "failed": 1}
    assert par.delta_top1 == pytest.approx(28.2 - 30.5)
    assert par.ref_row.top1_err == 22.95
