"""Configs as dataclasses: one place for defaults, help, validation, command-line flags and resume rules.

A config is a dataclass whose fields are declared with ``option``::

    @dataclass
    class MyConfig(RunConfig):
        lr: float = option(5e-3, "Adam's peak learning rate", check=positive)
        loss: str = option("nce", "training loss", choices=("nce", "full"))

From that one declaration:

* ``validate(config)`` (call it in ``__post_init__``) rejects a wrong type, an unknown choice (listing the
  valid ones) or a value that fails its check, with a ``ValueError`` naming the option;
* ``build_parser(MyConfig)`` makes the argparse parser: ``--lr``, ``--loss {nce,full}``, booleans as
  ``--flag/--no-flag``, every default shown in ``--help``;
* ``check_resumable(saved, config)`` is the one rule for resuming: only fields declared ``resumable=True``
  (where and how a run goes, never what it computes) may differ from the checkpoint's.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebm.harness.tensorboard import tensorboard_available
from ebm.utils.checks import device_name, positive, seed_value

Check = Callable[[str, Any], None]

# ---------------------------------------------------------------------------------------------- declaring


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    check: Check | None = None,
    resumable: bool = False,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
) -> Any:
    """A config field: its default, its help text and what makes a value valid.

    Args:
        default: the value when the option is not given (None: "not set", for ``X | None`` fields).
        help: one line for ``--help``.
        choices: the valid values (errors list them).
        check: a function (name, value) → None raising ValueError, e.g. ``positive``; skipped for None.
        resumable: may differ between a run and its resumption (where/how it runs, not what it computes).
        parse: how the command line's text becomes a value, when the field's type does not say it.
        metavar: the placeholder shown in ``--help``.
    """
    metadata = {"help": help, "choices": choices, "check": check, "resumable": resumable, "parse": parse,
                "metavar": metavar}
    return dataclasses.field(default=default, metadata=metadata)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    """The runtime types a field of this annotation accepts (``int | None`` → (int, NoneType))."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for arg in typing.get_args(annotation) for t in _allowed_types(arg))
    return (annotation,)


def _type_ok(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and int not in allowed and float in allowed:
        return True  # an int where a float is expected
    return isinstance(value, allowed)


def _type_name(allowed: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "None"}
    return " or ".join(names.get(t, t.__name__) for t in allowed)


def validate(config: Any) -> None:
    """Check every field of ``config`` against its declared type, choices and check (ValueError naming it)."""
    hints = _field_types(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        allowed = _allowed_types(hints[field.name])
        if not _type_ok(value, allowed):
            raise ValueError(f"{field.name} must be {_type_name(allowed)}, got {value!r}")
        choices = field.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"unknown {field.name} {value!r}; choose one of {', '.join(map(str, choices))}")
        check = field.metadata.get("check")
        if check is not None and value is not None:
            check(field.name, value)


def check_resumable(saved: dict[str, Any], config: Any) -> None:
    """Refuse to resume when a field that is not ``resumable`` differs from the checkpoint's config."""
    current = dataclasses.asdict(config)
    differ = [
        f"{field.name}: checkpoint {saved.get(field.name)!r}, now {current[field.name]!r}"
        for field in dataclasses.fields(config)
        if not field.metadata.get("resumable") and saved.get(field.name) != current[field.name]
    ]
    if differ:
        raise ValueError("cannot resume with a different configuration; " + "; ".join(differ))


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """The config of a saved dictionary (``config.json`` or a checkpoint), ignoring fields ``cls`` lacks."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in values.items() if key in names})


# -------------------------------------------------------------------------------------------- the parser


def _parse_number(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_type_name((kind,))}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def _parse_optional(kind: type) -> Callable[[str], Any]:
    number = _parse_number(kind)

    def parse(text: str) -> Any:
        return None if text.lower() == "none" else number(text)

    parse.__name__ = kind.__name__
    return parse


def _text_parser(annotation: Any) -> Callable[[str], Any]:
    allowed = _allowed_types(annotation)
    kinds = [t for t in allowed if t is not type(None)]
    if len(kinds) == 1 and kinds[0] in (int, float):
        return _parse_optional(kinds[0]) if type(None) in allowed else _parse_number(kinds[0])
    return str


def flag_of(name: str) -> str:
    """The command-line flag of a field: ``noise_ratio`` → ``--noise-ratio``."""
    return "--" + name.replace("_", "-")


def build_parser(cls: type, prog: str, description: str, run_fields: Sequence[str] = ()) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the config dataclass ``cls``, defaults in the help.

    Fields named in ``run_fields`` (how the run goes) are listed in a group of their own at the end, as are the
    groups a config names in its class attribute ``option_groups`` (title → field names). The other fields come
    first, those declared in ``cls`` itself before inherited ones.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    named = {**getattr(cls, "option_groups", {}), "running": tuple(run_fields)}
    group_of = {name: title for title, names in named.items() for name in names}
    groups = {title: parser.add_argument_group(title) for title in ("what to train", *named)}
    hints = _field_types(cls)
    own = cls.__dict__.get("__annotations__", {})
    for field in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
        meta = field.metadata
        if "help" not in meta:
            raise TypeError(f"{cls.__name__}.{field.name} is not declared with ebm.harness.config.option")
        group = groups[group_of.get(field.name, "what to train")]
        help_text = f"{meta['help']} (default: {field.default})"
        if hints[field.name] is bool:
            group.add_argument(flag_of(field.name), action=argparse.BooleanOptionalAction, default=field.default,
                               help=help_text)
            continue
        parse = meta["parse"] or _text_parser(hints[field.name])
        group.add_argument(flag_of(field.name), type=parse, default=field.default, choices=meta["choices"],
                           metavar=meta["metavar"] or ("NAME" if meta["choices"] else None), help=help_text)
    return parser


@dataclass
class RunConfig:
    """The fields every run has: how it runs, not what it computes (all but ``seed`` may change on resume)."""

    seed: int = option(0, "random seed (data, noise, initialisation), 0 ≤ seed < 2³²", check=seed_value)
    device: str = option("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps", check=device_name,
                         resumable=True)
    threads: int | None = option(None, "torch CPU threads (none: torch's choice; 1 is often fastest on a shared CPU)",
                                 check=positive, resumable=True)
    out: str = option("", "run folder (config.json, metrics.jsonl, checkpoint.pt, frames/); default runs/<run name>",
                      resumable=True)
    resume: bool = option(False, "continue the run in --out from its checkpoint", resumable=True)
    progress: bool = option(True, "progress bars (only when stderr is a terminal)", resumable=True)
    time_budget: float | None = option(None, "seconds of training (evaluation excluded); stops mid-epoch, resumable",
                                       check=positive, resumable=True)
    log_interval: int = option(25, "steps between divergence checks and progress-bar updates", check=positive,
                               resumable=True)
    tensorboard: bool = option(False, "also write TensorBoard curves to <run folder>/tensorboard (needs the "
                               "tensorboard package)", resumable=True)

    def __post_init__(self) -> None:
        validate(self)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"out: {self.run_dir} is a file, not a run folder; choose another --out")
        if self.tensorboard and not tensorboard_available():
            raise ValueError("tensorboard: the tensorboard package is not installed (pip install tensorboard)")

    def as_dict(self) -> dict[str, Any]:
        """The config as plain values (config.json, checkpoints)."""
        return dataclasses.asdict(self)

    def run_name(self) -> str:
        """The default run folder's name under runs/ (each setting says what identifies its runs)."""
        raise NotImplementedError

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.run_name()}")


RUN_FIELDS = tuple(field.name for field in dataclasses.fields(RunConfig))

__all__ = [
    "RUN_FIELDS",
    "RunConfig",
    "build_parser",
    "check_resumable",
    "flag_of",
    "from_dict",
    "option",
    "validate",
]
