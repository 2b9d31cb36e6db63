"""The attention zoo. Importing this package registers every module family."""

from attnexp.attention.base import AttentionModule, record_attention
from attnexp.attention.identity import init_identity  # also registers "none"
from attnexp.attention.registry import (
    ModuleSpec,
    available,
    build_attention,
    build_conv,
    check_options,
    get_spec,
    load_families,
    on_register,
    register,
)

# Every module file of the package is imported and registers its classes: a new module
# inside the package is one new file, nothing else to edit.
load_families()

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
