"""Shared CLI behaviour: one error printer and one set of exit codes for every console tool.

Exit codes (every ``attnexp-*`` command):

* ``0`` done;
* ``1`` a run failed while training (NaN loss, disk full, a crash), or in a sweep at least
  one run did;
* ``2`` a config or input error: our :class:`~attnexp.errors.ConfigError` (schema and
  consistency checks), Hydra's own composition errors (unknown group option, bad override
  syntax, unknown key), an unreadable config, an output folder that cannot be written;
* ``143`` stopped by SIGTERM (``last.ckpt`` saved).

A user mistake never prints a traceback: :func:`user_error_message` turns each of these
exceptions into a short message naming the key and the valid values.
"""

from __future__ import annotations

import errno
import functools
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from attnexp.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_CONFIG = 2
EXIT_SIGTERM = 143
#: OS errors that a user fixes by pointing a path elsewhere (exit 2 before a run starts).
PATH_ERRNOS = (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTDIR, errno.EEXIST)
#: OS errors of a full disk (a run that fails while training: exit 1, no traceback).
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _hydra_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (HydraException, OmegaConfBaseException)


def user_error_message(err: BaseException) -> str | None:
    """The message for an exception that is a user's config/input mistake; None otherwise."""
    if isinstance(err, ConfigError):
        return str(err)
    if isinstance(err, _hydra_errors()):
        return hydra_message(err)
    if isinstance(err, OSError) and err.errno in PATH_ERRNOS and err.filename:
        return f"cannot write {err.filename}: {err.strerror} ({errno.errorcode[err.errno]})"
    return None


def disk_message(err: BaseException) -> str | None:
    """A one-line message for a full disk / quota (the path and the cause)."""
    if isinstance(err, OSError) and err.errno in SPACE_ERRNOS:
        where = f" writing {err.filename}" if err.filename else ""
        return f"{err.strerror} ({errno.errorcode[err.errno]}){where}"
    return None


def hydra_message(err: BaseException) -> str:
    """Hydra's composition errors, on one paragraph, with the closest valid option or key."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(err, OverrideParseException):
        return f"cannot parse the override `{err.override}`: {' '.join(str(err).split())}"
    if isinstance(err, MissingConfigException) and err.options:
        missing = str(err.missing_cfg_file or "")
        group, _, option = missing.rpartition("/")
        from attnexp.validation.problems import closest

        guess = closest(option, err.options)
        hint = f" (did you mean {group}={guess}?)" if guess and group else ""
        return (
            f"`{group}={option}`: no such option of config group {group}{hint}; valid "
            f"choices: {', '.join(err.options)}"
            if group
            else " ".join(str(err).split())
        )
    text = str(err)
    cause = err.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}\n{cause}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("object_type=", "reference_type="))]
    message = "; ".join(lines)
    match = re.search(r"full_key: ([\w.\[\]]+)", message) or re.search(
        r"Could not override '([\w.]+)'", message
    )
    if match and "not in struct" in message:
        guess = _closest_config_key(match.group(1))
        if guess:
            message += f" (did you mean `{guess}`?)"
    if "Could not override 'debug'" in message or "'debug'" in message and "defaults" in message:
        message += " (debug presets are added: +debug=smoke)"
    return message


def _closest_config_key(key: str) -> str | None:
    """The closest key to ``key`` among its siblings in the default config."""
    from omegaconf import OmegaConf

    from attnexp.compose import compose_config
    from attnexp.validation.problems import closest

    parent, _, leaf = key.rpartition(".")
    try:
        cfg = compose_config([])
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except Exception:  # noqa: BLE001 - a hint only
        return None
    if node is None or not hasattr(node, "keys"):
        return None
    guess = closest(leaf, [str(k) for k in node])
    return f"{parent}.{guess}" if guess and parent and "." not in guess else guess


def print_config_error(err: BaseException | str, prog: str = "attnexp") -> None:
    """``<prog>: config error: <message>`` on stderr (no traceback)."""
    from rich.console import Console
    from rich.markup import escape

    message = err if isinstance(err, str) else (user_error_message(err) or str(err))
    Console(stderr=True, soft_wrap=True).print(
        f"[bold red]{prog}: config error:[/bold red] {escape(message)}", highlight=False
    )


def print_run_error(err: Exception, prog: str = "attnexp") -> None:
    """A run-time fault whose message already says what to do (a NaN loss, a full disk)."""
    from rich.console import Console
    from rich.markup import escape

    what = disk_message(err) or str(err)
    Console(stderr=True, soft_wrap=True).print(
        f"[bold red]{prog}: {type(err).__name__}:[/bold red] {escape(what)}", highlight=False
    )


def exit_on_config_error(prog: str) -> Callable[[F], F]:
    """Decorator for console entry points: a user mistake -> message on stderr, exit 2."""

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                message = user_error_message(err)
                if message is None:
                    raise
                print_config_error(message, prog)
                sys.exit(EXIT_CONFIG)

        return wrapper  # type: ignore[return-value]

    return decorator
