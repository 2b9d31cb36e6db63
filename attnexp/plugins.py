"""Load user code (attention modules and the like) without forking the package.

Two ways, both before any config is composed or validated:

* the top-level config key ``imports: [path/to/file.py, package.module]`` (default ``[]``):
  ``attnexp-train imports=[./my_gate.py] attention=my_gate``. A path (ending in ``.py`` or
  containing ``/``) is relative to the directory the command runs in; anything else is a
  module name imported with ``importlib``;
* installed packages declare an entry point in the group ``attnexp.plugins``, e.g. in their
  ``pyproject.toml``: ``[project.entry-points."attnexp.plugins"] my_gates =
  "my_gates.attention"`` (a module, imported) or ``"my_gates:setup"`` (a function, called).
  Every such entry point is loaded once per process.

The chicken-and-egg: Hydra composes ``attention=my_gate`` before any of our code sees the
config, and the ``attention/my_gate`` node only exists once ``my_gate`` is registered. So the
console tools and :func:`attnexp.compose.compose_config` call :func:`load_imports` on the raw
overrides first; the builders call :func:`import_user_code` with ``cfg.imports`` again (a
no-op then, but what loads the code in a sweep's worker process or when a run dir's config
is rebuilt by ``attnexp-eval``). ``imports`` set inside a YAML file is loaded at build time
only, so a group option it registers must be named on the command line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from attnexp.errors import ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "IMPORTS_KEY",
    "import_user_code",
    "imports_from_overrides",
    "load_entry_points",
    "load_imports",
]

ENTRY_POINT_GROUP = "attnexp.plugins"
IMPORTS_KEY = "imports"
_LOADED: dict[str, ModuleType] = {}
_entry_points_loaded = False


def imports_from_overrides(overrides: Sequence[str]) -> list[str]:
    """The values of ``imports=...`` (``+imports``, ``++imports``) among Hydra overrides.

    Other arguments (``-m``, ``--cfg``, ``attention=se``) are ignored; a sweep of imports
    (``imports=[a.py],[b.py]``) yields every file of every job.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found: list[str] = []
    parser = None
    for arg in overrides:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key != IMPORTS_KEY or "=" not in arg:
            continue
        parser = parser or OverridesParser.create()
        try:
            override = parser.parse_override(arg)
        except Exception as err:  # noqa: BLE001 - Hydra's grammar errors, as a config error
            raise ConfigError(
                f"cannot parse {arg!r}: {err}; write imports=[path/to/file.py,package.module]"
            ) from None
        values = (
            list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        )
        for value in values:
            found += [str(v) for v in (value if isinstance(value, list) else [value]) if v]
    return found


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def _import_file(spec: str) -> ModuleType:
    path = Path(spec).expanduser()
    path = (Path.cwd() / path).resolve() if not path.is_absolute() else path.resolve()
    key = str(path)
    if key in _LOADED:
        return _LOADED[key]
    if not path.is_file():
        raise ConfigError(
            f"imports: no such file {spec!r} (looked for {path}; relative paths start from "
            f"the directory the command runs in, {Path.cwd()})"
        )
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    name = f"_attnexp_import_{path.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"imports: {spec!r} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # helpers next to the file import as in a script
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ConfigError(f"imports: {spec!r} raised {type(err).__name__}: {err}") from err
    _LOADED[key] = module
    return module


def _import_module(spec: str) -> ModuleType:
    if spec in _LOADED:
        return _LOADED[spec]
    try:
        module = importlib.import_module(spec)
    except ModuleNotFoundError as err:
        if err.name and spec.startswith(err.name):
            raise ConfigError(
                f"imports: no module named {spec!r} (a file needs its path, e.g. ./{spec}.py)"
            ) from None
        raise ConfigError(f"imports: {spec!r} raised {type(err).__name__}: {err}") from err
    except Exception as err:
        raise ConfigError(f"imports: {spec!r} raised {type(err).__name__}: {err}") from err
    _LOADED[spec] = module
    return module


def load_entry_points() -> list[str]:
    """Load every ``attnexp.plugins`` entry point once per process; their names."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj: Any = ep.load()
            if callable(obj) and not isinstance(obj, (type, ModuleType)):
                obj()
        except Exception as err:
            raise ConfigError(
                f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP!r} raised "
                f"{type(err).__name__}: {err}"
            ) from err
        names.append(ep.name)
    return names


def import_user_code(specs: Iterable[str] | None) -> list[ModuleType]:
    """Import ``specs`` (files or module names; each once per process) and the entry points.

    ``specs`` is the config's ``imports`` list; ``None`` means none. Raises ConfigError
    naming the entry when a file or module is missing or fails while importing.
    """
    load_entry_points()
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    modules = []
    for spec in specs:
        spec = str(spec).strip()
        if spec:
            modules.append(_import_file(spec) if _is_path(spec) else _import_module(spec))
    return modules


def load_imports(overrides: Sequence[str]) -> list[ModuleType]:
    """Before Hydra composes: load the ``imports=...`` of raw overrides and the entry points.

    Every console tool calls this with ``sys.argv[1:]`` and
    :func:`~attnexp.compose.compose_config` with its overrides, so ``attention=<name>`` of
    a module in user code is a known group option by the time Hydra looks for it.
    """
    return import_user_code(imports_from_overrides(overrides))
