"""The attention zoo. Importing this package registers every module family."""

from attnexp.attention import identity  # noqa: F401  (registers "none")
from attnexp.attention.base import AttentionModule, record_attention
from attnexp.attention.registry import (
    GATE_POSITIONS,
    ModuleSpec,
    available,
    build_attention,
    build_conv,
    check_options,
    get_spec,
    register,
)

# Families register themselves on import; each file is one family (DESIGN.md section 3).
for _family in ("channel", "spatial", "token", "hybrid", "branch"):
    try:
        __import__(f"attnexp.attention.{_family}")
    except ModuleNotFoundError as _err:  # a family not written yet
        if _err.name != f"attnexp.attention.{_family}":
            raise

__all__ = [
    "GATE_POSITIONS",
    "AttentionModule",
    "ModuleSpec",
    "available",
    "build_attention",
    "build_conv",
    "check_options",
    "get_spec",
    "record_attention",
    "register",
]
