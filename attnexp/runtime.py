"""Process-level facts a run records: unique ids, package version, git commit, seeding."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import OmegaConf

import attnexp

_UID = f"{os.getpid()}{secrets.token_hex(2)}"


def unique_id() -> str:
    """Per-process id (pid + 4 random hex digits) that makes run dirs collision-free."""
    return _UID


def register_resolvers() -> None:
    """OmegaConf resolvers used by conf/ (idempotent)."""
    if not OmegaConf.has_resolver("attnexp_uid"):
        OmegaConf.register_new_resolver("attnexp_uid", unique_id, use_cache=True)


def package_version() -> str:
    return attnexp.__version__


def git_commit(path: str | Path | None = None) -> str | None:
    """Commit of the attnexp source tree (or ``path``), with ``-dirty`` when modified."""
    where = Path(path) if path else Path(attnexp.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run a block with ``count`` intra-op threads, then restore the previous count.

    Tiny ops (batch augmentation, unit-test tensors) are several times slower with two
    OpenMP threads on a shared 2-core machine: the barrier waits on a descheduled thread.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
