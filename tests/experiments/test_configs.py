"""The config groups of experiments: one attention config per registered module (and back),
conv/model/placement/launcher configs, variants and their published reference rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from exp_support import compose_train
from omegaconf import OmegaConf

from attnexp.analysis.reference import available_references, reference_table
from attnexp.attention import available, get_spec
from attnexp.experiments import (
    available_presets,
    conf_dir,
    expand_sweep,
    group_options,
    preset_sweep,
    split_sweep_values,
)
from attnexp.models import available_models, parse_placement

CONF = conf_dir()


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def test_every_registered_module_has_an_attention_config_and_back() -> None:
    configs = set(group_options("attention"))
    registered = set(available())
    assert registered - configs == set(), (
        f"modules without an attention config (generated from the registry): {registered - configs}"
    )
    assert configs - registered == set(), (
        f"attention configs of unregistered modules: {configs - registered}"
    )


@pytest.mark.parametrize("name", available())
def test_attention_config_lists_every_knob_with_the_constructor_default(name: str) -> None:
    cfg = OmegaConf.to_container(compose_train([f"attention={name}"]).attention)
    assert cfg.pop("name") == name
    spec = get_spec(name)
    assert set(cfg) == set(spec.option_names()), f"{name}: config keys vs constructor options"
    defaults = {k: _plain(v) for k, v in spec.option_defaults().items()}
    assert cfg == defaults, f"{name}: config defaults differ from the module's (paper) defaults"
    preset = CONF / "attention" / f"{name}.yaml"  # a preset file, where one exists
    if preset.exists():
        assert preset.read_text().startswith("#"), f"{name}.yaml must start with a comment"
    assert spec.paper, f"{name}: register(..., paper=...) names the paper"


def test_every_conv_module_has_a_conv_config() -> None:
    assert set(group_options("conv")) == set(available("conv"))
    for name in available("conv"):
        conv = OmegaConf.to_container(compose_train([f"conv={name}"]).conv)
        assert conv == OmegaConf.to_container(compose_train([f"attention={name}"]).attention)


def test_conv_defaults_to_null_and_knobs_override() -> None:
    assert compose_train([]).conv is None
    cfg = compose_train(["conv=sk", "conv.kernels=[3,3]"])
    assert cfg.conv.name == "sk" and list(cfg.conv.kernels) == [3, 3]


def test_every_model_has_a_config_and_back() -> None:
    assert set(group_options("model")) == set(available_models())
    for name in available_models():
        cfg = compose_train([f"model={name}", "data=cifar100"])
        assert cfg.model.name == name
        assert cfg.model.num_classes == 100 and cfg.model.image_size == 32


@pytest.mark.parametrize("name", group_options("placement"))
def test_placement_configs_parse(name: str) -> None:
    placement = OmegaConf.to_container(compose_train([f"placement={name}"]).placement)
    placement.pop("init", None)  # how placed modules start: read by the builder, not a placement
    parsed = parse_placement({"module": "se", **placement}, f"placement/{name}")
    assert parsed.position == placement["position"]


def test_launchers() -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    assert set(group_options("launcher")) == {"local", "joblib", "slurm"}
    targets = {
        "local": "BasicLauncher",
        "joblib": "JoblibLauncher",
        "slurm": "SlurmLauncher",
    }
    for name, target in targets.items():
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="attnexp.conf", version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=[f"launcher={name}", "trainer.devices=4"],
                return_hydra_config=True,
            )
        assert cfg.hydra.launcher._target_.endswith(target)
    # slurm: one task per GPU; strategy auto = DDP when the job has more than one task
    # (safe: srun starts the processes), a plain run for one
    assert cfg.hydra.launcher.tasks_per_node == 4 == cfg.hydra.launcher.gpus_per_node
    assert cfg.trainer.strategy == "auto"


def _variant_files() -> list[Path]:
    return sorted((CONF / "variant").glob("*/*.yaml"))


@pytest.mark.parametrize("path", _variant_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_variant_files(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# @package _global_\n# "), (
        "a variant starts with its package and a doc line"
    )
    data = yaml.safe_load(text)
    assert data["table"]["label"], "every variant has a human-readable label"
    assert "row" in data["table"]


def test_sweep_values_split() -> None:
    assert split_sweep_values("a,b,[3,5],c") == ["a", "b", "[3,5]", "c"]
    jobs = expand_sweep({"variant": "x/a,x/b", "seed": "0,1"})
    assert jobs[0] == ["variant=x/a", "seed=0"] and len(jobs) == 4


def _variant(value: str) -> dict:
    """A variant's config: its YAML file, or the node generated from the registry."""
    path = CONF / "variant" / f"{value}.yaml"
    if path.exists():
        return yaml.safe_load(path.read_text())
    from hydra.core.config_store import ConfigStore

    return OmegaConf.to_container(ConfigStore.instance().load(f"variant/{value}.yaml").node)


@pytest.mark.parametrize("name", available_presets())
def test_preset_documents_itself_and_its_sweep_exists(name: str) -> None:
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    params = preset_sweep(name)
    assert params, f"{name}: a preset sweeps something (hydra.sweeper.params)"
    if name == "demo":
        return
    for word in ("Swept:", "This preset:", "Reference:", "Protocol:", "Run:"):
        assert word in text, f"{name}: the header must say {word!r}"
    data = yaml.safe_load(text)
    assert data["experiment_name"] == name
    table = data["table"]
    ref = table.get("reference")
    if ref is not None:
        assert ref in available_references()
    for value in split_sweep_values(params.get("variant", "")):
        row = _variant(value)["table"]["row"]
        unpublished = "no paper number" in str(_variant(value)["table"].get("label"))
        if ref is not None and row is not None and not unpublished:
            assert reference_table(ref).row(row) is not None, (
                f"{name}: {value} maps to a row {row!r} missing in {ref}"
            )
    baseline = table.get("baseline") or {}
    jobs = expand_sweep(
        params, {k: group_options(k) for k, v in params.items() if v.startswith("glob(")}
    )
    for key, value in baseline.items():
        assert any(f"{key}={value}" in job for job in jobs), (
            f"{name}: its baseline {key}={value} is not swept"
        )


def test_presets_come_in_pairs() -> None:
    """Every paper ablation has an ImageNet preset (or its fine-tuning one) and a CIFAR
    analogue; published architectures (BoT50, DY-ResNet, CondConv: variant=architecture/*)
    are ImageNet models with fixed input sizes and have none."""
    names = set(available_presets())
    architectures = {
        n for n in names if preset_sweep(n).get("variant", "").startswith("architecture/")
    }
    stems = {
        n.rsplit("_", 1)[0]
        for n in names - architectures
        if n.endswith(("_cifar", "_imagenet", "_finetune"))
    }
    for stem in stems - {"zoo"}:
        assert f"{stem}_cifar" in names, stem
        assert {f"{stem}_imagenet", f"{stem}_finetune"} & names, stem


@pytest.mark.parametrize("key", available_references())
def test_reference_rows(key: str) -> None:
    ref = reference_table(key)
    assert ref.citation and ref.table and ref.rows
    if ref.baseline is not None:
        assert ref.row(ref.baseline) is not None
    for row in ref.rows.values():
        if row.top1_err is None:  # a parameter-count reference (BoTNet, DY-ResNet)
            assert row.params_m is not None and row.params_m > 0, row
        else:
            assert 0 < row.top1_err < 100


def test_reference_numbers_are_the_published_ones() -> None:
    assert reference_table("cbam_table3").row("parallel").top1_err == 22.95
    assert reference_table("cbam_table3").row("channel_first").top5_err == 6.31
    assert reference_table("senet_integration").row("identity").top1_err == 22.20
    assert reference_table("cbam_table4").row("resnext50_32x4d/cbam").top5_err == 5.91
    # ECA publishes accuracy: shown as error = 100 - acc
    assert reference_table("eca_kernel").row("k9").top1_err == pytest.approx(100 - 77.48)
    assert reference_table("sk_kernels").row("k3_k5_sk").top1_err == 20.79


def test_the_zoo_preset_covers_every_registered_module() -> None:
    zoo = set(group_options("variant/zoo"))
    assert zoo == set(available()), "variant zoo/<name> (generated) for every registered module"
    swept = split_sweep_values(preset_sweep("zoo_cifar")["variant"])
    assert swept[0] == "zoo/none" and sorted(swept) == sorted(f"zoo/{n}" for n in zoo)
