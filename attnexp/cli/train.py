"""``attnexp-train``: compose the config with Hydra and run one training (or a sweep with -m).

Thin on purpose: the run itself is :func:`attnexp.run.train`. What lives here is what a
command line needs:

* exit codes: 0 done; 1 a run failed (a NaN/inf loss: the message alone, no traceback) (in a sweep: after all other runs finished); 2 a
  config error (single run); 143 interrupted by SIGTERM (``last.ckpt`` saved).
* in a sweep (``-m``) a failing run is recorded (metrics.json status failed) and the other
  runs go on; Hydra reports the first failure at the end and we list all of them.
* ``resume=<run dir>`` continues in that run dir: Hydra is pointed at it and told not to
  write a second ``.hydra/`` there, so the original config stays the record.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

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


@hydra.main(version_base="1.3", config_path="pkg://attnexp.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from attnexp.cli import print_config_error, print_run_error
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
    except NonFiniteLossError as err:
        FAILED_RUNS.append((str(run_dir_of(cfg)), f"{type(err).__name__}: {err}"))
        if _is_multirun():
            raise
        # The message names the step and the likely causes; a traceback would bury it.
        print_run_error(err, "attnexp-train")
        sys.exit(1)
    except Exception as err:
        FAILED_RUNS.append((str(run_dir_of(cfg)), f"{type(err).__name__}: {err}"))
        raise
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
    from attnexp.training.resume import locate

    try:
        run_dir, _ = locate(targets[-1])
    except ConfigError as err:
        print_config_error(err, "attnexp-train")
        sys.exit(2)
    if run_dir is None:  # a bare checkpoint: a new run dir as usual
        return argv
    return [*argv, f"hydra.run.dir={Path(run_dir)}", "hydra.output_subdir=null"]


def main() -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    sys.argv = [sys.argv[0], *_resume_argv(sys.argv[1:])]
    try:
        _hydra_main()
    except SIGTERMException:
        print("[attnexp] stopped by SIGTERM; last.ckpt saved (see metrics.json for how to resume)")
        sys.exit(143)
    finally:
        if len(FAILED_RUNS) > 1 or (FAILED_RUNS and "-m" in sys.argv):
            print(
                f"[attnexp] {len(FAILED_RUNS)} run(s) failed (status 'failed' in their metrics.json):"
            )
            for run_dir, message in FAILED_RUNS:
                print(f"  {run_dir}: {message.splitlines()[0][:300]}")


if __name__ == "__main__":
    main()
