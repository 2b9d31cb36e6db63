"""The attention zoo. Importing this package registers every module family."""

import importlib
import pkgutil

from attnexp.attention.base import AttentionModule, record_attention
from attnexp.attention.identity import init_identity  # also registers "none"
from attnexp.attention.registry import (
    ModuleSpec,
    available,
    build_attention,
    build_conv,
    check_options,
    get_spec,
    on_register,
    register,
)

# Every module file of the package is imported, and its @register classes register
# themselves: a new module inside the package is one new file, nothing else to edit.
# (Files whose name starts with "_" are skipped.)
for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "AttentionModule",
    "ModuleSpec",
    "available",
    "build_attention",
    "build_conv",
    "check_options",
    "get_spec",
    "init_identity",
    "on_register",
    "record_attention",
    "register",
]
