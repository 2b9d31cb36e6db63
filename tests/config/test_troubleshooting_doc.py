"""docs/troubleshooting.md is generated from the code: it must be up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_troubleshooting_doc_is_up_to_date() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "update_troubleshooting.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, (
        out.stdout + out.stderr + ("\nregenerate with: python scripts/update_troubleshooting.py")
    )


def test_doc_lists_every_validator_message_kind_and_key() -> None:
    from attnexp.validation.problems import KINDS
    from attnexp.validation.schemas.trainer import TrainerSchema

    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    for kind in KINDS.values():
        assert f"| {kind.name} |" in text
    for key in TrainerSchema.model_fields:
        assert f"`trainer.{key}`" in text
