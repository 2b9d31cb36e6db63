"""recipe=finetune: a pretrained CIFAR ResNet-20 (an attnexp checkpoint) + SE, identity
init, lower lr for the pretrained weights than for the new modules, mixup on top."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from attnexp import builders
from attnexp.compose import compose_config
from attnexp.errors import ConfigError
from attnexp.models import build_model
from attnexp.run import train

TINY = ["+debug=smoke", "logger=none", "trainer.deterministic=true"]


def _plain(record: object) -> dict:
    """The run record as a dict (train returns a RunRecord or its dict form)."""
    return record.to_dict() if hasattr(record, "to_dict") else dict(record)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet20 'trained' elsewhere, saved as an attnexp Lightning checkpoint."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10)
    path = tmp_path_factory.mktemp("pre") / "best-epoch009.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


class Groups(L.Callback):
    """Records the optimizer's param groups (lr and parameter names) when training starts."""

    def __init__(self) -> None:
        self.groups: list[tuple[float, set[str]]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        names = {id(p): n for n, p in pl_module.model.named_parameters()}
        self.groups = [
            (g["lr"], {names[id(p)] for p in g["params"]})
            for g in trainer.optimizers[0].param_groups
        ]


def test_finetune_recipe_groups_and_identity_start(
    pretrained: Path, tmp_path: Path, monkeypatch
) -> None:
    cfg = compose_config(
        [
            *TINY,
            "recipe=finetune",
            "attention=se",
            f"model.pretrained={pretrained}",
            "trainer.max_epochs=1",
        ],
        tmp_path / "run",
    )
    assert cfg.placement.init == "identity" and cfg.training.backbone_lr_mult == 0.1
    # step 0: the network with SE inserted computes what the pretrained network did
    backbone = builders.build_backbone(cfg).eval()
    plain = build_model("resnet20", num_classes=10).eval()
    plain.load_state_dict({k[6:]: v for k, v in torch.load(pretrained)["state_dict"].items()})
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (backbone(x) - plain(x)).abs().max() < 1e-5
    se = {n for n, _ in backbone.named_parameters() if ".attn." in n}
    assert set(backbone.newly_initialised) == se

    groups = Groups()
    original = builders.build_callbacks
    monkeypatch.setattr(builders, "build_callbacks", lambda c: [*original(c), groups])
    record = train(cfg)
    assert _plain(record)["status"] == "completed"
    lr = float(cfg.optimizer.lr)
    by_lr = {round(g_lr, 12): names for g_lr, names in groups.groups}
    assert set(by_lr) == {round(lr * 0.1, 12), round(lr, 12)}
    assert by_lr[round(lr, 12)] == se  # new modules: full lr
    assert (
        se.isdisjoint(by_lr[round(lr * 0.1, 12)]) and "conv1.weight" in by_lr[round(lr * 0.1, 12)]
    )


def test_backbone_lr_mult_without_pretrained_weights_is_an_error(tmp_path: Path) -> None:
    from attnexp.training.finetune import split_backbone_lr

    model = build_model("resnet20", num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="model.pretrained"):
        split_backbone_lr(optimizer, model, 0.1)
    split_backbone_lr(optimizer, model, 1.0)  # no split asked: nothing to check
    assert len(optimizer.param_groups) == 1


def test_mixup_trains_and_measures_clean_labels(tmp_path: Path) -> None:
    """A run with mixup + cutmix + TrivialAugment + erasing completes; the train error is
    computed on the clean labels (a valid percentage), val/test are unmixed."""
    cfg = compose_config(
        [
            *TINY,
            "data.augment.mixup_alpha=0.2",
            "data.augment.cutmix_alpha=1.0",
            "data.augment.trivialaugment=true",
            "data.augment.random_erasing=0.25",
        ],
        tmp_path / "run",
    )
    module = builders.build_module(cfg, builders.build_backbone(cfg), 10)
    assert module.mixer is not None and module.mixer.seed == int(cfg.seed)
    record = train(cfg)
    plain = _plain(record)
    assert plain["status"] == "completed" and 0.0 <= plain["test"]["top1_err"] <= 100.0
