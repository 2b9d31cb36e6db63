"""attnexp-table on fabricated run records (grouping, baselines, the Welch interval, published
numbers, flagged failures, mixing warnings, refusal to overwrite, --latest) and on a real
offline wandb sweep read back from wandb's own files."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from exp_support import TINY, write_run
from scipy import stats

from attnexp.analysis.table import build_table, collect_wandb, collect_wandb_offline, welch_ci
from attnexp.analysis.table.wandb import find_offline_runs, read_offline_run
from attnexp.cli.table import OUTPUT_FILES, latest_sweep, run
from attnexp.errors import ConfigError
from attnexp.results import RunDir, write_metrics

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


def test_measured_throughput_per_setting(tmp_path: Path) -> None:
    """train img/s: mean ± std of the completed runs' measured throughput, and how many of
    them were compiled; the CSV keeps the plain values."""
    sweep = tmp_path / "multirun" / "s"
    rates = {"none": [(400.0, True), (420.0, True)], "se": [(300.0, False), (330.0, True)]}
    job = 0
    for module, runs in rates.items():
        for seed, (rate, compiled) in enumerate(runs):
            write_run(
                sweep / str(job),
                [f"attention={module}"],
                seed=seed,
                top1=30.0 + seed,
                job_num=job,
                images_per_s=rate,
                compiled=compiled,
            )
            job += 1
    write_run(sweep / str(job), ["attention=eca"], seed=0, top1=31.0, job_num=job)  # no rate
    table = build_table([sweep])
    none, se, eca = table.rows
    assert none.train_images_per_s.mean == 410.0 and none.compiled_runs == 2
    assert se.train_images_per_s.std == pytest.approx(statistics.stdev([300.0, 330.0]))
    md = table.to_markdown()
    assert "train img/s" in md and "410 ± 14 (compiled)" in md and "315 ± 21 (1/2 compiled)" in md
    assert eca.train_images_per_s.n == 0 and "| – |" in md
    record = table.records()[1]
    assert record["train_images_per_s_mean"] == 315.0 and record["compiled_runs"] == 1


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


def test_mixed_datasets_backbones_and_recipes_are_flagged(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "s"
    for i, (att, top1) in enumerate([("none", 10.0), ("none", 11.0), ("se", 9.0), ("se", 9.5)]):
        write_run(sweep / str(i), [f"attention={att}"], seed=i % 2, top1=top1)
    assert build_table([sweep]).warnings == []  # one dataset, backbone and recipe
    # a run of another dataset lands in the se row: flagged in that row and for the table
    write_run(sweep / "4", ["attention=se"], seed=2, top1=5.0, dataset="imagefolder")
    table = build_table([sweep])
    row_warning, table_warning = table.warnings
    assert "row 'se' averages runs of different datasets: cifar100; imagefolder" in row_warning
    assert "mixes runs of different datasets" in table_warning and "'none'" in table_warning
    assert "⚠ this table mixes runs of different datasets" in table.to_markdown()
    run([str(sweep), "--no-save"])
    assert "warning: row 'se' averages runs of different datasets" in capsys.readouterr().err
    # backbones and recipes (epochs) likewise
    other = tmp_path / "o"
    write_run(other / "0", ["attention=none"], seed=0, top1=10.0)
    write_run(other / "1", ["attention=se"], seed=0, top1=9.0)
    record = RunDir(other / "1").read_record_dict()
    record["model"] = "resnet56"
    record["config"]["trainer"] = {"max_epochs": 5}
    (other / "1" / "metrics.json").write_text(json.dumps(record))
    text = " ".join(build_table([other]).warnings)
    assert "different backbones: resnet20 (rows 'none'); resnet56 (rows 'se')" in text
    assert "different recipes" in text and "epochs=5" in text


def test_conv_and_extra_placements_keep_their_rows(tmp_path: Path) -> None:
    """Runs started outside Hydra have no overrides: rows come from the full attention
    description, so a conv module or an extra placement is not merged into the plain row."""
    base = {"status": "completed", "seed": 0, "model": "resnet20", "dataset": "synthetic"}
    configs = {
        "plain": {"attention": {"name": "se"}},
        "conv": {"attention": {"name": "se"}, "conv": {"name": "sk", "sites": ["conv2"]}},
        "extra": {
            "attention": {"name": "se"},
            "extra_placements": [{"module": {"name": "bam"}, "position": "between_stages"}],
        },
    }
    for name, config in configs.items():
        for seed, top1 in enumerate((10.0, 11.0)):
            record = {**base, "seed": seed, "attention": "se", "config": config}
            write_metrics(tmp_path / name / str(seed), {**record, "test": {"top1_err": top1}})
    table = build_table([tmp_path])
    assert sorted(r.modules for r in table.rows) == [
        "se",
        "se + bam@between_stages",
        "se + conv=sk[conv2]",
    ]
    assert all(r.n == 2 for r in table.rows)
    assert "modules" in table.columns() and "conv=sk[conv2]" in table.to_markdown()
    assert "se + conv=sk[conv2]" in {rec["modules"] for rec in table.records()}


def test_one_column_list_drives_every_format(tmp_path: Path) -> None:
    from attnexp.analysis.table import COLUMNS

    table = build_table([_sweep(tmp_path)])
    shown = [c for c in COLUMNS if c.human and c.show(table)]
    assert table.columns() == [c.header(table) for c in shown]
    header = table.to_markdown().splitlines()[2]
    assert header == "| " + " | ".join(table.columns()) + " |"
    tex_header = next(line for line in table.to_latex().splitlines() if "setting &" in line)
    assert tex_header.count("&") == len(shown) - 1
    rich = table.to_rich()
    assert [c.header for c in rich.columns] == table.columns()
    csv_header = table.to_csv().splitlines()[0].split(",")
    assert csv_header == [f for c in COLUMNS for f in c.csv_fields()]
    assert list(table.records()[0]) == csv_header


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


# -- wandb: a real offline sweep, read back from wandb's own files ------------------------
WANDB_SWEEP = ("optimizer.lr=0.1,0.05", "seed=0,1")


@pytest.fixture(scope="module")
def wandb_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``attnexp-train -m optimizer.lr=0.1,0.05 seed=0,1 logger=wandb`` (offline), as a
    user runs it: 2 settings x 2 seeds, one process, real wandb files."""
    cwd = tmp_path_factory.mktemp("wandb_sweep")
    tiny = [o for o in TINY if not o.startswith("logger=")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    train = subprocess.run(
        [sys.executable, "-m", "attnexp.cli.train", "-m", *WANDB_SWEEP, *tiny, "logger=wandb"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    (sweep,) = list((cwd / "outputs" / "default" / "multirun").iterdir())
    return sweep


@pytest.mark.essential
def test_wandb_sweep_names_groups_and_tags(wandb_sweep: Path) -> None:
    """Issue 19: one group per sweep, a name per job (swept values + seed), swept tags; the
    same names in the CSV log's hparams and in metrics.json."""
    runs = [read_offline_run(p) for p in find_offline_runs(wandb_sweep)]
    assert len(runs) == 4 and all(r.state == "finished" for r in runs)
    assert sorted(r.name for r in runs) == [
        "lr=0.05,s0",
        "lr=0.05,s1",
        "lr=0.1,s0",
        "lr=0.1,s1",
    ]
    assert {r.group for r in runs} == {f"default/{wandb_sweep.name}"}
    assert {r.job_type for r in runs} == {"train"}
    for r in runs:
        lr = r.name.split(",")[0].split("=")[1]
        assert f"optimizer.lr={lr}" in r.tags and "resnet20" in r.tags
        assert not any(t.startswith("seed") for t in r.tags)
        assert r.config["optimizer"]["lr"] == float(lr)  # top-level config keys
        assert f"optimizer.lr={lr}" in r.config["hydra"]["overrides"]
    for job in sorted(p for p in wandb_sweep.iterdir() if p.name.isdigit()):
        run = RunDir(job)
        names = run.read_record().names
        hparams = yaml.safe_load((run.csv_dir / "hparams.yaml").read_text())
        assert hparams["run"]["name"] == names.name and names.name in {r.name for r in runs}
        assert hparams["run"]["group"] == names.group == f"default/{wandb_sweep.name}"


@pytest.mark.essential
def test_wandb_collection_gives_the_rows_of_the_run_directories(wandb_sweep: Path) -> None:
    """Issue 20: runs as attnexp logs them to wandb (top-level config + hydra.overrides),
    collected with --wandb, give one row per lr (n=2 each), like their directories."""
    offline = build_table(collect_wandb_offline(wandb_sweep))
    on_disk = build_table([wandb_sweep])
    assert [r.label for r in on_disk.rows] == ["0.1", "0.05"]
    assert [r.label for r in offline.rows] == [r.label for r in on_disk.rows]
    for a, b in zip(offline.rows, on_disk.rows):
        assert a.n == b.n == 2 and a.setting == b.setting
        assert a.top1.values == pytest.approx(b.top1.values)
        assert a.params == b.params and a.macs == b.macs
    assert collect_wandb_offline(wandb_sweep, group="other") == []
    table = run(["--wandb", str(wandb_sweep), "--no-save"])
    assert [r.n for r in table.rows] == [2, 2]
