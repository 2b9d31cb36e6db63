"""One problem of a config (key, value, what is valid, how to fix it), and the error that
carries all of them.

The validator collects every problem before it raises, so a user fixes a config in one
round instead of one key per run. :class:`ConfigProblems` is a
:class:`~attnexp.errors.ConfigError` (exit code 2) whose message lists them, one per line.

Every message the validator can produce has a kind here (:data:`KINDS`) with the fix a
user applies; ``scripts/update_troubleshooting.py`` writes them into
``docs/troubleshooting.md``, so the catalogue cannot drift from the code.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from attnexp.errors import ConfigError


@dataclass(frozen=True)
class Kind:
    """A family of messages: a template (for the docs) and the fix."""

    name: str
    template: str
    fix: str


#: Every kind of problem the validator reports, with its fix (docs/troubleshooting.md).
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "invalid_value",
            "`<key>=<value>`: expected <type and range or choices>",
            "use a value of the stated type and range (the schema table below lists each key)",
        ),
        Kind(
            "missing_key",
            "`<key>` is missing: expected <type>",
            "set it (`<key>=...`) or select a config of its group that defines it",
        ),
        Kind(
            "unknown_key",
            "`<key>`: unknown key (did you mean `<closest>`?); valid keys of `<group>`: ...",
            "fix the spelling; keys added with `+` are checked too. Only pass-through "
            "namespaces (trainer, callback and logger arguments, optimizer arguments) accept "
            "other keys, and those must be arguments of the class they are passed to",
        ),
        Kind(
            "option_key",
            "`data.num_workers`: not an option of data=synthetic (it is one of data=imagefolder, "
            "imagenet); valid keys of data=synthetic: ...",
            "the key belongs to another option of the group: drop it, or select that option",
        ),
        Kind(
            "unknown_argument",
            "`<key>`: not an argument of <class> (did you mean `<closest>`?); valid: ...",
            "use one of the listed arguments of that class",
        ),
        Kind(
            "unresolved",
            "`<key>`: cannot resolve `${...}`: <reason>",
            "fix the interpolation (e.g. set the environment variable it reads)",
        ),
        Kind(
            "unknown_choice",
            "`<key>=<value>`: unknown <what>; valid choices: ...",
            "pick one of the listed names",
        ),
        Kind(
            "placement",
            "`placement.stages=[5]`: stage 5 does not exist; resnet20 has 3 stages, valid: 1, 2, 3",
            "select stages/blocks the backbone has (checked whatever the attention module, "
            "`attention=none` included); `python -m attnexp.models <model>` lists them",
        ),
        Kind(
            "dataset_size",
            "`data.batch_size=100000`: larger than the 5000 training images ...",
            "a batch (per device x devices x nodes) must fit in the training split",
        ),
        Kind(
            "classes",
            "`data.num_train=3`: fewer training images than the 10 classes ...",
            "every class needs training images: more images, or fewer classes",
        ),
        Kind(
            "schedule",
            "`trainer.max_epochs=0`: ... / `scheduler.milestones`: milestone 100 is beyond "
            "trainer.max_epochs=90 / `scheduler.warmup=10` covers the whole run ...",
            "make the schedule fit the run length (max_epochs, or max_steps with "
            "scheduler.unit=step)",
        ),
        Kind(
            "precision",
            "`trainer.precision=16-mixed`: needs a CUDA GPU, the run is on cpu ...",
            "use a precision the device supports (32-true or bf16-mixed on CPU)",
        ),
        Kind(
            "hardware",
            "`trainer.accelerator=gpu`: no CUDA GPU is visible ... / `trainer.devices=8`: ...",
            "ask for hardware that is there (trainer.accelerator=cpu, fewer devices), or run "
            "on a machine that has it",
        ),
        Kind(
            "optimizer",
            "`optimizer.nesterov=true` needs `optimizer.momentum` > 0 and dampening 0",
            "set momentum > 0 or nesterov=false",
        ),
        Kind(
            "output",
            "`paths.output_dir=<dir>`: cannot write there: <ancestor> is on a read-only "
            "file system (EROFS) / not writable (EACCES)",
            "point `paths.root` (or ATTNEXP_OUTPUT_ROOT) at a writable folder",
        ),
        Kind(
            "consistency",
            "`model.num_classes=<n>` differs from `data.num_classes=<m>` / other pairs of "
            "keys that contradict each other",
            "make the two keys agree (the message names both)",
        ),
    )
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config. ``key`` is the dotted config key."""

    key: str
    message: str
    kind: str = "invalid_value"

    def __str__(self) -> str:
        return self.message


class ConfigProblems(ConfigError):
    """Every problem found in a config; the message lists them one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = self.problems[0].message
        else:
            lines = "\n".join(f"  - {p.message}" for p in self.problems)
            text = f"{len(self.problems)} problems in the config:\n{lines}"
        super().__init__(text)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.problems]


def fmt_value(value: object) -> str:
    """A value as a user typed it on the command line (short)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value) if isinstance(value, (int, float, str)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


#: Keys users reach for that live elsewhere in our config.
ALIASES: dict[str, str] = {
    "ckpt_path": "resume",
    "checkpoint": "resume",
    "resume_from_checkpoint": "resume",
    "lr": "optimizer.lr",
    "learning_rate": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay",
    "epochs": "trainer.max_epochs",
    "max_epochs": "trainer.max_epochs",
    "batch_size": "data.batch_size",
    "num_workers": "data.num_workers (data=imagefolder / imagenet only)",
    "warmup_epochs": "scheduler.warmup",
    "gpus": "trainer.devices",
    "precision": "trainer.precision",
    "dataset": "data (data=<name>)",
    "label_smoothing": "training.label_smoothing",
}


def closest(name: str, valid: Iterable[str]) -> str | None:
    """The valid key closest to ``name`` (difflib), or a known alias."""
    valid = list(valid)
    leaf = name.rsplit(".", 1)[-1]
    match = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.6)
    if match:
        return match[0]
    return ALIASES.get(leaf)


def unknown_key(key: str, valid: Sequence[str], where: str, kind: str = "unknown_key") -> Problem:
    """``key`` is not in ``valid`` (the keys of ``where``)."""
    guess = closest(key, valid)
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    hint = ""
    if guess:
        full = guess if "." in guess or not parent else f"{parent}.{guess}"
        hint = f" (did you mean `{full}`?)"
    listed = ", ".join(sorted(valid))
    return Problem(key, f"`{key}`: unknown key{hint}; valid keys of {where}: {listed}", kind)
