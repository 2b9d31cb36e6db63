"""The one exception type for bad user input.

Every config, placement, option or data problem that a user can fix by editing a config
or a path raises :class:`ConfigError`; the CLIs catch it and print a one-paragraph message
instead of a traceback (see ``attnexp.cli``).
"""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """A config value, option, name or path that cannot work; the message says how to fix it."""


def choices_error(what: str, got: object, valid: Iterable[object]) -> ConfigError:
    """Build the standard 'unknown X' error that lists the valid choices."""
    valid_list = ", ".join(str(v) for v in valid)
    return ConfigError(f"unknown {what} {got!r}; valid choices: {valid_list}")


def check(condition: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``condition`` holds (range and type checks)."""
    if not condition:
        raise ConfigError(message)
