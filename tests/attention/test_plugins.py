"""A new module is one file: outside the package (``imports=[...]``, the ``attnexp.plugins``
entry points) or inside it (a file in attnexp/attention/), and no YAML anywhere.

The gate files are written by the tests into temporary directories; the command lines are
the real ones (``python -m attnexp.cli.train``, ``python -m attnexp.attention``) in
subprocesses, as a user would type them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import attnexp
from attnexp.attention import AttentionModule, available, get_spec, register
from attnexp.attention import registry as registry_module
from attnexp.builders import build_backbone
from attnexp.compose import compose_config
from attnexp.errors import ConfigError
from attnexp.plugins import imports_from_overrides, load_imports

GATE_NAME = "tmp_plugin_gate"
#: A user's file: the class and its decorator, nothing else.
GATE_FILE = f'''
import torch
from torch import nn

from attnexp.attention import AttentionModule, register


@register("{GATE_NAME}", paper="a test plugin")
class TmpPluginGate(AttentionModule):
    """x * sigmoid(W GAP(x)): a gate written outside the package.

    Args:
        channels: C.
        scale: multiplies the pooled descriptor.
    """

    def __init__(self, channels: int, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.fc(x.mean((2, 3)) * self.scale))
        self.expose("channel", g)
        return x * g[:, :, None, None].to(x.dtype)
'''
#: A file whose module breaks the contract (it halves the channels).
BROKEN_FILE = """
from torch import nn

from attnexp.attention import AttentionModule, register


@register("tmp_broken_gate", paper="a broken test plugin")
class Broken(AttentionModule):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, max(channels // 2, 1), 1)

    def forward(self, x):
        return self.conv(x)
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **extra}


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _registry_restored() -> Iterator[None]:
    """Modules registered by a test (in process, or by a plugin file it imports) leave the
    registry, the generated configs and the import cache as they were: later tests (the
    golden costs, the zoo preset) see the real zoo only."""
    from hydra.core.config_store import ConfigStore

    from attnexp import plugins

    groups = ("attention", "conv", "variant/zoo")

    def group_node(group: str) -> dict:
        node = ConfigStore.instance().repo
        for part in group.split("/"):
            node = node.get(part, {})
        return node

    before = set(registry_module._REGISTRY)
    stored = {group: set(group_node(group)) for group in groups}
    loaded, modules = dict(plugins._LOADED), set(sys.modules)
    yield
    for name in set(registry_module._REGISTRY) - before:
        registry_module._REGISTRY.pop(name, None)
    for group in groups:
        node = group_node(group)
        for entry in set(node) - stored[group]:
            node.pop(entry, None)
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)
    for name in set(sys.modules) - modules:
        if name not in ("attnexp",) and not name.startswith(("attnexp.", "torch", "hydra")):
            sys.modules.pop(name, None)


@pytest.fixture
def gate_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_gate.py"
    path.write_text(GATE_FILE)
    return path


def _metrics(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("metrics.json"))]


# ----------------------------------------------------------------------------- parsing
def test_imports_are_found_among_overrides() -> None:
    argv = ["-m", "attention=x,se", "imports=[./a.py,pkg.mod]", "+debug=smoke", "seed=1"]
    assert imports_from_overrides(argv) == ["./a.py", "pkg.mod"]
    assert imports_from_overrides(["+imports=b.py"]) == ["b.py"]
    assert imports_from_overrides(["imports=[]", "attention=se"]) == []


def test_a_missing_import_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no_such_gate.py"):
        load_imports([f"imports=[{tmp_path}/no_such_gate.py]"])
    with pytest.raises(ConfigError, match="no_such_package_xyz"):
        load_imports(["imports=[no_such_package_xyz.gates]"])


# ----------------------------------------------------------------------------- in process
class InTestGate(AttentionModule):
    """A gate defined in a test module: registered, composed and built with no YAML."""

    def __init__(self, channels: int, boost: float = 2.0) -> None:
        super().__init__()
        self.boost = boost
        self.weight = torch.nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.weight * self.boost)
        self.expose("channel", g.expand(x.shape[0], -1))
        return x * g[None, :, None, None]


def test_a_registered_class_is_a_config_option_without_yaml(tmp_path: Path) -> None:
    register("tmp_in_test_gate", paper="test only")(InTestGate)
    try:
        cfg = compose_config(
            ["attention=tmp_in_test_gate", "attention.boost=3.0", "data.image_size=16"],
            tmp_path,
        )
        assert dict(cfg.attention) == {"name": "tmp_in_test_gate", "boost": 3.0}
        model = build_backbone(cfg).eval()
        placed = [m for m in model.modules() if isinstance(m, InTestGate)]
        assert placed and all(m.boost == 3.0 for m in placed)
        with torch.no_grad():
            logits = model(torch.randn(2, 3, 16, 16))
        assert logits.shape == (2, cfg.model.num_classes)
    finally:
        registry_module._REGISTRY.pop("tmp_in_test_gate", None)


def test_a_file_is_imported_by_compose_config_and_built(gate_file: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        [f"imports=[{gate_file}]", f"attention={GATE_NAME}", "data.image_size=16"], tmp_path
    )
    assert GATE_NAME in available("gate")
    assert get_spec(GATE_NAME).option_help()["scale"] == "multiplies the pooled descriptor."
    assert cfg.attention.scale == 1.0 and list(cfg.imports) == [str(gate_file)]
    model = build_backbone(cfg)
    assert any(type(m).__name__ == "TmpPluginGate" for m in model.modules())
    load_imports([f"imports=[{gate_file}]"])  # a second load is a no-op, not a re-registration


# ----------------------------------------------------------------------------- command lines
def test_listing_and_check_of_a_plugin_file(gate_file: Path, tmp_path: Path) -> None:
    listing = _run(["-m", "attnexp.attention", "--imports", "my_gate.py"], cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if GATE_NAME in line)
    assert "a test plugin" in row and "65,792" in row  # params at C=256, on one line (piped)

    check = _run(["-m", "attnexp.attention", "check", GATE_NAME, "--imports", "my_gate.py"],
                 cwd=tmp_path)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{GATE_NAME}: 13/13 contract checks passed" in check.stdout


def test_check_reports_a_broken_module(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN_FILE)
    check = _run(["-m", "attnexp.attention", "check", "tmp_broken_gate", "--imports",
                  "broken.py"], cwd=tmp_path)  # fmt: skip
    assert check.returncode == 1, check.stdout + check.stderr
    assert "FAIL keeps_shape_and_dtype" in check.stdout
    unknown = _run(["-m", "attnexp.attention", "check", "not_registered_anywhere"], cwd=tmp_path)
    assert unknown.returncode == 2 and "not_registered_anywhere" in unknown.stderr


def test_an_installed_package_registers_through_the_entry_point_group(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "tmp_gates_pkg").mkdir(parents=True)
    (site / "tmp_gates_pkg" / "__init__.py").write_text(GATE_FILE)
    dist = site / "tmp_gates_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tmp-gates-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[attnexp.plugins]\ntmp_gates = tmp_gates_pkg\n")
    listing = _run(["-m", "attnexp.attention"], cwd=tmp_path, PYTHONPATH=str(site))
    assert listing.returncode == 0, listing.stderr
    assert any(GATE_NAME in line for line in listing.stdout.splitlines())


def test_a_new_file_inside_the_package_is_all_it_takes(tmp_path: Path) -> None:
    """A copy of the package plus one file in attnexp/attention/: listed, configurable."""
    copy = tmp_path / "src"
    shutil.copytree(
        Path(attnexp.__file__).parent, copy / "attnexp",
        ignore=shutil.ignore_patterns("__pycache__"),
    )  # fmt: skip
    (copy / "attnexp" / "attention" / "tmp_family.py").write_text(GATE_FILE)
    code = textwrap.dedent(f"""
        import attnexp
        from attnexp.compose import compose_config
        assert attnexp.__file__.startswith({str(copy)!r}), attnexp.__file__
        cfg = compose_config(["attention={GATE_NAME}", "+variant=zoo/{GATE_NAME}"])
        print(cfg.attention.name, cfg.attention.scale, cfg.table.label)
    """)
    out = _run(["-c", code], cwd=tmp_path, PYTHONPATH=str(copy))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [GATE_NAME, "1.0", GATE_NAME]


@pytest.mark.slow
def test_a_plugin_file_trains_from_the_command_line(gate_file: Path, tmp_path: Path) -> None:
    out = _run(
        ["-m", "attnexp.cli.train", "imports=[my_gate.py]", f"attention={GATE_NAME}",
         "+debug=smoke", f"paths.root={tmp_path / 'out'}", "logger=none"],
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (record,) = _metrics(tmp_path / "out")
    assert record["status"] == "completed"
    assert record["attention"]["name"] == GATE_NAME


@pytest.mark.slow
def test_a_plugin_module_is_swept_with_a_zoo_module(gate_file: Path, tmp_path: Path) -> None:
    out = _run(
        ["-m", "attnexp.cli.train", "-m", "imports=[my_gate.py]", f"attention={GATE_NAME},se",
         "+debug=smoke", f"paths.root={tmp_path / 'out'}", "logger=none"],
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    records = _metrics(tmp_path / "out")
    assert sorted(r["attention"]["name"] for r in records) == sorted([GATE_NAME, "se"])
    assert all(r["status"] == "completed" for r in records)
