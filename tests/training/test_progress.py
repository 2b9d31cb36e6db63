"""Progress in non-terminal output: plain, time-stamped lines at the configured interval."""

from __future__ import annotations

import contextlib
import datetime
import io
import re
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import RichProgressBar

from attnexp.run import train
from attnexp.training.progress import PlainProgress, progress_bar

#: A run of a few seconds: 2 epochs of 24 small batches, no test.
RUN = (
    "data=synthetic",
    "data.num_train=384",
    "data.num_val=16",
    "data.num_test=16",
    "data.batch_size=16",
    "data.image_size=16",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "logger=none",
    "test=false",
)
STAMP = re.compile(r"^\[attnexp (\d\d:\d\d:\d\d)\] (.*)$")


def test_a_file_gets_plain_lines_and_a_terminal_the_rich_bar(monkeypatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert isinstance(progress_bar(), PlainProgress)
    monkeypatch.setattr("sys.stdout", Tty())
    assert isinstance(progress_bar(), RichProgressBar)
    assert isinstance(progress_bar(mode="plain"), PlainProgress)
    with pytest.raises(ValueError, match="auto"):
        progress_bar(mode="fancy")


def test_a_run_writing_to_a_file_shows_a_line_per_interval(make_cfg, tmp_path: Path) -> None:
    log = tmp_path / "slurm.out"
    cfg = make_cfg(*RUN, "callbacks.progress.every_seconds=1")
    with open(log, "w") as fh, contextlib.redirect_stdout(fh):
        assert train(cfg)["status"] == "completed"
    lines = [m.groups() for m in map(STAMP.match, log.read_text().splitlines()) if m]
    texts = [text for _, text in lines]
    assert texts[0].startswith("training from epoch 1/2, 24 batches per epoch; progress every 1 s")
    assert texts[-1].startswith("training done: 2 epochs, 48 steps in")
    steps = [t for t in texts if " img/s " in t]
    assert steps, texts
    for text in steps:
        assert re.search(
            r"epoch [12]/2 step \d+/48 batch \d+/24 loss \d+\.\d{4} lr [\d.e-]+ ", text
        )
        assert re.search(r"\d+ img/s ETA \d+:\d\d:\d\d$", text)
    assert sum("validated: val/loss" in t and "val/top1_err" in t for t in texts) == 2
    # one line per interval (1 s): no gap between two lines much longer than that
    times = [datetime.datetime.strptime(t, "%H:%M:%S") for t, _ in lines]
    gaps = [(b - a).total_seconds() % 86400 for a, b in zip(times, times[1:])]
    total = (times[-1] - times[0]).total_seconds() % 86400
    assert max(gaps) <= 3, list(zip(gaps, texts[1:]))
    assert len(steps) >= total / 3 - 1


def test_a_line_every_n_steps(make_cfg, capsys) -> None:
    progress = ("mode=plain", "every_seconds=0", "every_n_steps=10")
    train(make_cfg(*RUN, *(f"callbacks.progress.{o}" for o in progress)))
    steps = [line for line in capsys.readouterr().out.splitlines() if " img/s " in line]
    assert [int(re.search(r"step (\d+)/", s).group(1)) for s in steps] == [10, 20, 30, 40]
