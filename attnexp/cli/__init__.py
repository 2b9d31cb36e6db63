"""Shared CLI behaviour: config errors become one short message, not a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from attnexp.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def print_config_error(err: ConfigError, prog: str = "attnexp") -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]{prog}: config error:[/bold red] {err}", highlight=False)


def print_run_error(err: Exception, prog: str = "attnexp") -> None:
    """A run-time fault whose message already says what to do (e.g. a NaN loss)."""
    from rich.console import Console

    Console(stderr=True).print(
        f"[bold red]{prog}: {type(err).__name__}:[/bold red] {err}", highlight=False
    )


def exit_on_config_error(prog: str) -> Callable[[F], F]:
    """Decorator for console entry points: ConfigError -> message on stderr, exit code 2."""

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ConfigError as err:
                print_config_error(err, prog)
                sys.exit(2)

        return wrapper  # type: ignore[return-value]

    return decorator
