"""``attnexp-train``: compose the config with Hydra and run one training (or a sweep with -m).

Thin on purpose: the run itself is :func:`attnexp.run.train`. What lives here is what a
command line needs:

* exit codes (``attnexp.cli``): 0 done; 1 a run failed while training (a NaN/inf loss or a
  full disk: the message alone, no traceback); 2 a config or input error, Hydra's own
  composition errors included; 143 interrupted by SIGTERM (``last.ckpt`` saved). A single
  run's config is composed and checked before Hydra creates its run directory.
* in a sweep (``-m``) a failing run is recorded (metrics.json status failed) and the other
  runs go on; at the end each failed run is listed with its one-line reason (tracebacks
  of crashes stay in metrics.json); exit 1 if any run failed while training, else 2.
* ``resume=<run dir>`` continues in that run dir: Hydra is pointed at it and told not to
  write a second ``.hydra/`` there, so the original config stays the record.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from attnexp.cli import EXIT_CONFIG, EXIT_RUN_FAILED, EXIT_SIGTERM
from attnexp.runtime import register_resolvers

register_resolvers()

#: (run dir, message) of every failed run of this process (a sweep's in-process jobs).
FAILED_RUNS: list[tuple[str, str]] = []


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _is_global_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


@hydra.main(version_base="1.3", config_path="pkg://attnexp.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from attnexp.cli import EXIT_RUN_FAILED, disk_message, print_config_error, print_run_error
    from attnexp.errors import ConfigError
    from attnexp.run import run_dir_of, summary_line, train
    from attnexp.training.module import NonFiniteLossError

    try:
        record = train(cfg)
    except ConfigError as err:
        FAILED_RUNS.append((str(run_dir_of(cfg)), f"config error: {err}"))
        if _is_multirun():
            raise  # Hydra records the job as failed and runs the others
        print_config_error(err, "attnexp-train")
        sys.exit(2)
    except (NonFiniteLossError, OSError) as err:
        FAILED_RUNS.append((str(run_dir_of(cfg)), f"{type(err).__name__}: {err}"))
        if _is_multirun() or not (isinstance(err, NonFiniteLossError) or disk_message(err)):
            raise
        # The message names the step and the likely causes (or the full disk's path); a
        # traceback would bury it.
        print_run_error(err, "attnexp-train")
        sys.exit(EXIT_RUN_FAILED)
    except Exception as err:
        FAILED_RUNS.append((str(run_dir_of(cfg)), f"{type(err).__name__}: {err}"))
        raise
    if _is_global_rank_zero():  # every DDP rank runs this function; one summary line
        print(summary_line(record))
    return record["best"]["val_top1_err"]


def _resume_argv(argv: list[str]) -> list[str]:
    """Point Hydra's run dir at the run being resumed (single runs only)."""
    if "-m" in argv or "--multirun" in argv or any(a.startswith("hydra.run.dir=") for a in argv):
        return argv
    targets = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if not targets or targets[-1] in ("", "null"):
        return argv
    from attnexp.cli import print_config_error
    from attnexp.errors import ConfigError
    from attnexp.training.resume import locate, recorded_group_choices

    try:
        run_dir, _ = locate(targets[-1])
    except ConfigError as err:
        print_config_error(err, "attnexp-train")
        sys.exit(2)
    if run_dir is None:  # a bare checkpoint: a new run dir as usual
        return argv
    # In front: Hydra's own flags (--cfg job ...) may follow the overrides.
    return [
        *_unset(recorded_group_choices(Path(run_dir)), argv),
        f"hydra.run.dir={Path(run_dir)}",
        "hydra.output_subdir=null",
        *argv,
    ]


def _unset(choices: list[str], argv: list[str]) -> list[str]:
    """``choices`` (``group=option``) whose group the command line does not set itself."""
    given = {a.lstrip("+~").split("=", 1)[0] for a in argv}
    return [c for c in choices if c.lstrip("+").split("=", 1)[0] not in given]


def main() -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from attnexp.cli.show_config import print_resolved, wants_resolved_hydra
    from attnexp.plugins import load_imports

    if part := wants_resolved_hydra(sys.argv[1:]):  # Hydra cannot resolve ${paths.root} there
        print_resolved(part, sys.argv[1:])
        return
    sys.argv = [sys.argv[0], *_resume_argv(sys.argv[1:])]
    # Hydra then raises its composition errors instead of printing them and exiting with 1;
    # _exit_code prints them as config errors (exit 2).
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        # User code first: Hydra must know `attention=<a module in that code>` (attnexp.plugins)
        load_imports(sys.argv[1:])
        _prevalidate(sys.argv[1:])
        _hydra_main()
    except SIGTERMException:
        print("[attnexp] stopped by SIGTERM; last.ckpt saved (see metrics.json for how to resume)")
        sys.exit(EXIT_SIGTERM)
    except Exception as err:
        if full_error:
            traceback.print_exc()
        sys.exit(_exit_code(err))
    finally:
        if len(FAILED_RUNS) > 1 or (FAILED_RUNS and _multirun_argv(sys.argv[1:])):
            print(
                f"[attnexp] {len(FAILED_RUNS)} run(s) failed (status 'failed' in their metrics.json):"
            )
            for run_dir, message in FAILED_RUNS:
                print(f"  {run_dir}: {message.splitlines()[0][:300]}")


def _multirun_argv(argv: list[str]) -> bool:
    return "-m" in argv or "--multirun" in argv


def _prevalidate(argv: list[str]) -> None:
    """A single run: compose and check the config before Hydra creates the run directory
    (Hydra makes it before calling the task). Sweeps and resumes are checked per job, and
    command lines with Hydra flags or ``hydra.*`` overrides are left to Hydra."""
    if any(a.startswith("-") for a in argv) or any(
        a.lstrip("+~").startswith(("hydra.", "hydra/", "resume=")) for a in argv
    ):
        return
    from attnexp.compose import compose_config
    from attnexp.validation import check_config

    cfg = compose_config(argv)
    check_config(cfg)  # imports the config's `imports` first


def _exit_code(err: BaseException) -> int:
    """Print what stopped the command (one line for user mistakes) and return the exit code."""
    from attnexp.cli import disk_message, print_config_error, print_run_error, user_error_message

    if FAILED_RUNS and _multirun_argv(sys.argv[1:]):  # each job's reason is listed at the end
        config_only = all(m.startswith("config error:") for _, m in FAILED_RUNS)
        return EXIT_CONFIG if config_only else EXIT_RUN_FAILED
    message = user_error_message(err)
    if message is not None:
        print_config_error(message, "attnexp-train")
        return EXIT_CONFIG
    if disk_message(err) is not None:
        print_run_error(err, "attnexp-train")  # type: ignore[arg-type]
        return EXIT_RUN_FAILED
    traceback.print_exception(err)
    return EXIT_RUN_FAILED


if __name__ == "__main__":
    main()
