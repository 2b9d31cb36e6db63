"""``launcher``: the ranges of ``hydra.launcher.*`` for ``launcher=joblib`` and
``launcher=slurm`` (Hydra's own schemas already refuse unknown keys and wrong types).

Checked inside a Hydra app (``attnexp-train``), where the launcher config exists.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from attnexp.validation.schema import PassThrough

PosInt = Annotated[int, Field(ge=1)]


class JoblibSchema(PassThrough):
    n_jobs: int = Field(
        2, description="a non-zero integer (-1 = one job per CPU)", json_schema_extra={"ne": 0}
    )
    backend: str | None = None
    prefer: str = "processes"


class SlurmSchema(PassThrough):
    timeout_min: PosInt = 2880
    nodes: PosInt = 1
    tasks_per_node: PosInt = 1
    gpus_per_node: Annotated[int, Field(ge=0)] | None = None
    cpus_per_task: PosInt | None = None
    mem_gb: Annotated[int, Field(ge=1)] | None = None
    signal_delay_s: Annotated[int, Field(ge=0)] = 120
    max_num_timeout: Annotated[int, Field(ge=0)] = 0
    array_parallelism: PosInt = 256
    setup: list[str] | None = None
    additional_parameters: dict[str, Any] = {}


#: By the launcher's ``_target_``.
BY_TARGET: dict[str, type[PassThrough]] = {
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher": JoblibSchema,
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher": SlurmSchema,
}
