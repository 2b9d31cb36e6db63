"""The typed run record: JSON round trip, migration of schema 1 files, unknown keys kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnexp.results import (
    SCHEMA_VERSION,
    AttentionSpec,
    RunDir,
    RunRecord,
    read_metrics,
    write_metrics,
)

#: A record as attnexp 0.x (schema 1) wrote it: the attention field is only a name.
V1 = {
    "schema_version": 1,
    "status": "completed",
    "experiment": "default",
    "seed": 2,
    "model": "resnet20",
    "attention": "se",
    "dataset": "synthetic",
    "epochs": 3,
    "global_step": 30,
    "final": {"val_top1_err": 40.0, "val_top5_err": 5.0},
    "best": {"val_top1_err": 38.5, "epoch": 1},
    "test": {"top1_err": 39.0, "top5_err": 4.5, "checkpoint": "best"},
    "costs": {"params": 1234, "macs": 5678},
    "training": {"lr": 0.1, "ema": False, "resumes": []},
    "hydra": {"overrides": ["attention=se", "seed=2"], "choices": {}, "job_num": 3},
    "config": {
        "seed": 2,
        "attention": {"name": "se", "reduction": 16},
        "placement": {"position": "after_conv3", "stages": [2, 3], "blocks": "all"},
        "conv": {"name": "sk", "sites": ["conv1", "conv2"], "M": 2},
        "extra_placements": [
            {"module": {"name": "bam", "reduction": 16}, "position": "between_stages"}
        ],
    },
    "added_by_someone": {"x": 1},
}


def test_schema_1_files_are_migrated_with_the_full_attention_description() -> None:
    record = RunRecord.from_dict(V1)
    assert record.schema_version == SCHEMA_VERSION == 2
    spec = record.attention
    assert spec.name == "se" and spec.main is not None
    assert spec.main.options == {"reduction": 16}
    assert spec.main.position == "after_conv3" and spec.main.stages == [2, 3]
    assert (
        spec.conv is not None and spec.conv.name == "sk" and spec.conv.sites == ["conv1", "conv2"]
    )
    assert spec.conv.options == {"M": 2}
    assert [e.name for e in spec.extra] == ["bam"] and spec.extra[0].position == "between_stages"
    assert spec.label() == "se@after_conv3 stages=[2,3] + conv=sk[conv1,conv2] + bam@between_stages"
    assert record.test.top1_err == 39.0 and record.best.epoch == 1 and record.hydra.job_num == 3
    assert record.error_rates("val") == (38.5, 5.0)


def test_round_trip_keeps_every_field_and_unknown_keys() -> None:
    record = RunRecord.from_dict(V1)
    data = record.to_dict()
    assert data["schema_version"] == 2 and list(data)[0] == "schema_version"
    assert data["attention"]["name"] == "se"  # readable without the types
    assert data["added_by_someone"] == {"x": 1}
    again = RunRecord.from_dict(json.loads(record.to_json()))
    assert again == record


def test_a_v1_record_without_config_keeps_the_name() -> None:
    record = RunRecord.from_dict({"status": "failed", "attention": "cbam", "error": {"type": "E"}})
    assert record.attention.name == "cbam" and record.attention.conv is None
    assert record.error is not None and record.error.type == "E" and not record.ok
    assert RunRecord.from_dict({"attention": "none"}).attention.main is None


def test_newer_schema_is_refused() -> None:
    with pytest.raises(ValueError, match="newer than this attnexp"):
        RunRecord.from_dict({"schema_version": SCHEMA_VERSION + 1})


def test_other_placement_keys_are_kept() -> None:
    config = {"attention": {"name": "se"}, "placement": {"position": "auto", "init": "identity"}}
    spec = AttentionSpec.from_config(config)
    assert spec.main is not None and spec.main.placement == {"init": "identity"}
    assert spec.label() == "se init=identity"
    assert AttentionSpec.from_dict(spec.to_dict()) == spec


def test_attention_spec_from_a_config_without_attention() -> None:
    spec = AttentionSpec.from_config({"attention": {"name": "none"}, "conv": None})
    assert spec.main is None and spec.conv is None and spec.label() == "none"


def test_write_read_and_refuse_a_second_writer(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    write_metrics(run.path, V1)
    assert read_metrics(run.path)["attention"]["conv"]["name"] == "sk"
    assert run.read_record().seed == 2 and run.status() == "completed"
    with pytest.raises(FileExistsError, match="exactly one run"):
        run.write_record(RunRecord())
    run.write_record(RunRecord(status="failed"), overwrite=True)
    assert run.status() == "failed"


def test_summary_line_names_conv_and_extra_modules() -> None:
    line = RunRecord.from_dict({**V1, "wall_seconds": 12.0}).summary_line()
    assert "conv=sk[conv1,conv2]" in line and "bam@between_stages" in line and "39.00/4.50" in line
    failed = RunRecord.from_dict(
        {"status": "failed", "error": {"type": "ConfigError", "message": "x"}}
    )
    assert "FAILED" in failed.summary_line() and "before training" in failed.summary_line()
