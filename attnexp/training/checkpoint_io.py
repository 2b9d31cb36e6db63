"""Checkpoint files that are either the old version or the new one, never half written.

Lightning's default writer stages the file in the system temp dir and moves it; when that
dir is on another filesystem (the usual /tmp vs. /scratch split on clusters) the "move" is
a copy straight into ``last.ckpt``, and a job killed during the copy leaves a truncated
checkpoint that cannot be resumed. Here the temporary file lives next to the target, is
fsync'ed, and replaces it with one ``os.replace`` (atomic on POSIX filesystems).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a same-directory temporary file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:  # disk full, quota, read-only: name the checkpoint and the cause
        tmp.unlink(missing_ok=True)
        if err.filename:
            raise
        raise OSError(err.errno, f"{err.strerror} (checkpoint not written)", str(path)) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (remote URLs: Lightning's own path)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(str(path)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
