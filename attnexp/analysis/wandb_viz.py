"""Weights & Biases views: attention-map grids per epoch and at the end, sweep tables.

Enable the callback next to the default ones (checkpoints, progress, lr monitor)::

    attnexp-train callbacks=[default,attention_maps] logger=wandb ...

It takes the first batch of the validation set, draws the grid of
:func:`attnexp.analysis.attention_maps.attention_grid` (input | attention maps per stage |
Grad-CAM) plus the channel/branch plots when the model has such maps, and logs them with
``WandbLogger.log_image`` after every ``every_n_epochs`` epochs (the dashboard shows how the
maps form; same images each epoch) and at the end of training. When ``save_path`` is set,
the final grid is also saved as a PNG (so runs without wandb get the picture too).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from attnexp.analysis.attention_maps import (
    ImageBatch,
    attention_grid,
    branch_figure,
    channel_figure,
    figure_to_array,
    panel_for,
    save_figure,
)
from attnexp.analysis.samples import validation_sample

log = logging.getLogger(__name__)


def _first_val_batch(trainer: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    loaders = getattr(trainer, "val_dataloaders", None)
    if loaders is None and getattr(trainer, "datamodule", None) is not None:
        loaders = trainer.datamodule.val_dataloader()
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    if loaders is None:
        raise RuntimeError("no validation dataloader to take images from")
    batch = next(iter(loaders))
    if isinstance(batch, Mapping):
        return batch.get("image", batch.get("x")), batch.get("label", batch.get("y"))
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def displayable(
    x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    """Normalised float images -> uint8 (N, 3, H, W): undo ``mean``/``std`` when known,
    otherwise min-max scale each image."""
    x = x.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    else:
        lo = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
        hi = x.flatten(1).max(1).values.view(-1, 1, 1, 1)
        x = (x - lo) / (hi - lo).clamp_min(1e-8)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    i = 1
    while (candidate := path.with_name(f"{path.stem}-{i}{path.suffix}")).exists():
        i += 1
    return candidate


class AttentionMapLogger(L.Callback):
    """At the end of training: attention-map grid of the first val batch to wandb (and a PNG).

    Args:
        n: images (rows) taken from the first validation batch.
        cams: CAM methods (``gradcam``, ``gradcam++``), may be empty.
        maps: spatial-map columns: ``last`` | ``mean`` | ``all`` (see ``spatial_columns``).
        target_layer: Grad-CAM layer name (default: the last stage).
        key: wandb image key; channel/branch plots go to ``<key>/channel`` and ``<key>/branch``.
        save_path: also write the grid here (never replacing a file: ``-1``, ``-2`` ... are
            appended); ``None`` = wandb only.
        every_n_epochs: also log the images to wandb after every this many epochs (after
            that epoch's validation); ``None`` or 0 = only at the end of training.
    """

    def __init__(
        self,
        n: int = 8,
        cams: Sequence[str] = ("gradcam",),
        maps: str = "last",
        target_layer: str | None = None,
        key: str = "attention_maps",
        save_path: str | None = None,
        seed: int = 0,
        every_n_epochs: int | None = 1,
    ) -> None:
        super().__init__()
        if every_n_epochs is not None and every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0 or None, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs or 0
        self.n = n
        self.cams = list(cams)
        self.maps = maps
        self.target_layer = target_layer
        self.key = key
        self.save_path = Path(save_path) if save_path else None
        #: which images: the run's seed, so every epoch and every run of a sweep share them
        self.seed = int(seed)
        self.saved: Path | None = None

    @staticmethod
    def _wandb_loggers(trainer: Any) -> list[WandbLogger]:
        return [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, WandbLogger)]

    def _log(self, trainer: Any, pl_module: L.LightningModule, save: bool) -> None:
        wandb_loggers = self._wandb_loggers(trainer)
        if not getattr(trainer, "is_global_zero", True) or (
            not wandb_loggers and not (save and self.save_path is not None)
        ):
            return
        try:
            images = self.render(trainer, pl_module, save=save)
        except Exception as err:  # a picture must never fail a training
            log.warning(
                "AttentionMapLogger: no attention maps drawn (%s: %s)", type(err).__name__, err
            )
            return
        step = int(getattr(trainer, "global_step", 0))
        for lg in wandb_loggers:
            for key, (array, caption) in images.items():
                lg.log_image(key=key, images=[array], caption=[caption], step=step)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After the epoch's validation (outside its no-grad context: Grad-CAM needs
        gradients), every ``every_n_epochs`` epochs: the images to wandb."""
        epoch = int(getattr(trainer, "current_epoch", 0)) + 1
        if self.every_n_epochs and epoch % self.every_n_epochs == 0:
            self._log(trainer, pl_module, save=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, save=True)

    def render(
        self, trainer: Any, pl_module: L.LightningModule, save: bool = True
    ) -> dict[str, tuple[Any, str]]:
        """Draw the figures; returns ``{wandb key: (RGB array, caption)}``; with ``save``,
        also writes the PNG to ``save_path``."""
        dm = getattr(trainer, "datamodule", None)
        try:  # the fixed class-balanced sample of the whole val split (analysis/samples.py)
            x, y = validation_sample(dm, self.n, self.seed)
            source = f"val sample (seed {self.seed}, class-balanced)"
        except TypeError:  # a datamodule without accessible splits: the first val batch
            x, y = _first_val_batch(trainer)
            x, source = x[: self.n], "first val batch"
        class_names = list(getattr(dm, "class_names", None) or [str(i) for i in range(1000)])
        labels = [int(v) for v in y[: self.n].tolist()] if y is not None else [None] * len(x)
        batch = ImageBatch(
            displayable(x, getattr(dm, "mean", None), getattr(dm, "std", None)),
            labels,
            [class_names[v] if v is not None and v < len(class_names) else "" for v in labels],
            source,
        )
        model = getattr(pl_module, "model", pl_module)
        device = next(model.parameters()).device
        label = f"{getattr(model, 'name', type(model).__name__)} at the end of training"
        panel = panel_for(
            model, x.to(device), batch, class_names, label, self.maps, self.cams, self.target_layer
        )
        grid = attention_grid(
            batch, [panel], title=f"epoch {getattr(trainer, 'current_epoch', '?')}"
        )
        out = {
            self.key: (
                figure_to_array(grid),
                f"input | attention maps | {', '.join(self.cams) or 'no CAM'}",
            )
        }
        for suffix, fig in (
            ("channel", channel_figure(panel.modules)),
            ("branch", branch_figure(panel.modules)),
        ):
            if fig is not None:
                out[f"{self.key}/{suffix}"] = (figure_to_array(fig), f"{suffix} attention weights")
        if save and self.save_path is not None:
            self.saved = save_figure(grid, _unique(self.save_path))
        return out


# -- tables ---------------------------------------------------------------------------------------
def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def sweep_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Any:
    """A ``wandb.Table`` from table rows (e.g. :func:`attnexp.analysis.table.aggregate`);
    ``columns`` default to the keys of the rows in first-seen order."""
    import wandb

    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    return wandb.Table(
        columns=list(columns), data=[[_cell(r.get(c)) for c in columns] for r in rows]
    )


def log_sweep_table(
    rows: Iterable[Mapping[str, Any]],
    key: str = "sweep_table",
    run: Any = None,
    columns: Sequence[str] | None = None,
) -> Any:
    """Log the rows as a ``wandb.Table`` under ``key`` to ``run`` (default: the active
    ``wandb.run``); returns the table."""
    import wandb

    target = run if run is not None else wandb.run
    if target is None:
        raise RuntimeError("no active wandb run: call wandb.init(...) first or pass run=")
    table = sweep_table(rows, columns)
    target.log({key: table})
    return table
