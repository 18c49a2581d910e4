"""Dataclass configs and named profiles read from ``configs/*.yaml``.

A profile is one YAML file with a section per stage. Each stage owns its config dataclass
(``teachers.TeacherConfig``, ``curate.CurateConfig``, ``train.TrainConfig``,
``evaluate.EvalConfig``; ``DataConfig`` lives here), with a comment per field and validation
in ``__post_init__``, so a typo in a YAML key or a bad value fails at load time with the
file and section named, not an hour into a run.

Profiles: ``smoke`` (tiny random model, a handful of problems, seconds per stage; tests and
CI), ``cpu`` (embedded SmolLM2-135M, MD on SVAMP in under 20 minutes; ``make demo``),
``laptop`` (the paper's comparison at the embedded student's scale, 1 h 20 min measured on 2 cores),
``gpu`` (a 7B student with QLoRA on the full split) and ``gpu-gsm8k`` (the same on GSM8K).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
PROFILES = ("smoke", "cpu", "laptop", "gpu", "gpu-gsm8k")
# Seconds per stage on 2 CPU cores, shown at the top of each notebook so a student knows what a run costs:
# cpu from a fresh clone's `make demo` (docs/demo_times.json), smoke from `python -m mdlab demo --profile smoke`
# on 2 busy cores, laptop from its one full run. gpu profiles have no laptop measurement.
STAGE_SECONDS = {
    "smoke": {"generate": 18, "curate": 13, "train": 25, "evaluate": 17, "report": 11},
    "cpu": {"generate": 13, "curate": 5, "train": 671, "evaluate": 239, "report": 9},
    "laptop": {"generate": 7, "curate": 13, "train": 2519, "evaluate": 2228, "report": 12},
}


class ConfigError(ValueError):
    """A profile file is missing or has an unknown key or a bad value."""


def _allowed(hint) -> tuple[tuple, bool] | None:
    """(the values a ``Literal`` type allows, whether the field is a list of them), or None for other types."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint), False
    if typing.get_origin(hint) is list and typing.get_origin(typing.get_args(hint)[0]) is Literal:
        return typing.get_args(typing.get_args(hint)[0]), True
    return None


def check_choices(obj, section: str) -> None:
    """Raise ``ConfigError`` where a field holds a value its ``Literal`` type (or list of one) does not allow.

    The choices are read from the annotations, so they are written once, in the dataclass.
    """
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        rule = _allowed(hints[field.name])
        if rule is None:
            continue
        allowed, is_list = rule
        value = getattr(obj, field.name)
        values = value if is_list and isinstance(value, list) else [value]
        if (is_list and (not isinstance(value, list) or not value)) or any(v not in allowed for v in values):
            what = "a non-empty list drawn from" if is_list else "one of"
            raise ConfigError(f"{section}.{field.name} must be {what} {allowed}, got {value!r}")


def check_positive(obj, section: str, names: tuple[str, ...], *, nullable: bool = False) -> None:
    """Raise ``ConfigError`` unless each named field is >= 1 (or None when ``nullable``)."""
    for name in names:
        value = getattr(obj, name)
        if (value is None and not nullable) or (value is not None and value < 1):
            raise ConfigError(f"{section}.{name} must be >= 1{' or null' if nullable else ''}, got {value}")


@dataclasses.dataclass
class DataConfig:
    dataset: str = "svamp"  # registry name (data.REGISTRY)
    train_split: str = "train"  # split the teacher rationales and the student training come from
    test_split: str = "test"  # split the student is evaluated on
    train_limit: int | None = None  # first N training problems (None = all)
    test_limit: int | None = None  # first N test problems (None = all)

    def __post_init__(self):
        from mdlab import data

        if self.dataset not in data.REGISTRY:
            raise ConfigError(f"data.dataset: unknown dataset {self.dataset!r}; known: {', '.join(data.REGISTRY)}")
        splits = data.REGISTRY[self.dataset].splits
        for field in ("train_split", "test_split"):
            if getattr(self, field) not in splits:
                raise ConfigError(f"data.{field}: {self.dataset} has no split {getattr(self, field)!r}; "
                                  f"its splits: {', '.join(splits)}")
        check_positive(self, "data", ("train_limit", "test_limit"), nullable=True)


@dataclasses.dataclass
class Profile:
    name: str  # profile name, also the default run directory name (runs/<name>)
    data: DataConfig  # which problems
    teacher: Any  # teachers.TeacherConfig
    curate: Any  # curate.CurateConfig
    train: Any  # train.TrainConfig
    evaluate: Any  # evaluate.EvalConfig
    path: Path | None = None  # the YAML file it came from

    def to_dict(self) -> dict:
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else (
                str(value) if isinstance(value, Path) else value)
        return out


def _stage_classes() -> dict[str, type]:
    from mdlab import curate, evaluate, teachers, train

    return {"data": DataConfig, "teacher": teachers.TeacherConfig, "curate": curate.CurateConfig,
            "train": train.TrainConfig, "evaluate": evaluate.EvalConfig}


def _build(cls: type, section: str, values: dict, where: Path):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: section {section!r} must be a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} in section {section!r}; known: {sorted(known)}")
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: section {section!r}: {exc}") from None


def profile_path(profile: str | os.PathLike) -> Path:
    text = str(profile)
    if text in PROFILES or (not text.endswith((".yaml", ".yml")) and (CONFIG_DIR / f"{text}.yaml").exists()):
        return CONFIG_DIR / f"{text}.yaml"
    path = Path(text)
    if not path.is_absolute() and not path.exists() and (CONFIG_DIR.parent / path).exists():
        return CONFIG_DIR.parent / path  # a notebook's kernel starts in notebooks/; "configs/x.yaml" is the project's
    return path


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.model=tiny", "evaluate.k=4"]`` (the CLI's ``--set``) -> ``{"train.model": "tiny", ...}``.

    Values are read as YAML, as in a profile file: ``4`` is a number, ``[md, pot]`` a list, ``null`` None.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.model=tiny")
        out[key.strip()] = yaml.safe_load(value)
    return out


def merged(profile: str | os.PathLike, overrides: dict[str, Any] | None = None) -> tuple[Path, dict]:
    """(the profile's file, its raw sections with ``overrides`` applied): dotted keys ``section.key``."""
    path = profile_path(profile)
    if not path.exists():
        raise ConfigError(f"no profile {str(profile)!r}: {path} does not exist; use one of {PROFILES} "
                          "or a path to a YAML file")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a profile is a mapping of sections, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in _stage_classes() or not key:
            raise ConfigError(f"override {dotted!r}: expected section.key with a section in "
                              f"{sorted(_stage_classes())}")
        raw[section] = {**(raw.get(section) or {}), key: value}
    return path, raw


def load(profile: str | os.PathLike = "smoke", overrides: dict[str, Any] | None = None, **sections: dict) -> Profile:
    """A profile by name (smoke | cpu | laptop | gpu) or YAML path.

    ``overrides``: ``{"train.model": "tiny", ...}``, validated like the file (an unknown key is an
    error naming it); ``sections``: whole-section updates, ``data={"test_limit": 2}``.
    """
    path, raw = merged(profile, overrides)
    classes = _stage_classes()
    unknown = sorted(set(raw) - set(classes) - {"name"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; known: {sorted(classes)}")
    built = {}
    for section, cls in classes.items():
        values = dict(raw.get(section) or {})
        values.update(sections.get(section, {}))
        where = path if not overrides else f"{path} with overrides {sorted(overrides)}"
        built[section] = _build(cls, section, values, where)
    return Profile(name=raw.get("name", path.stem), path=path, **built)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def expected_time(profile: Profile, stage: str) -> str:
    """One line for a notebook's top: how long its stage takes with this profile on a 2-core laptop."""
    measured = STAGE_SECONDS.get(profile.name, {})
    if stage not in measured:
        return f"profile {profile.name}: this notebook has not been timed on a laptop with it"
    committed = CONFIG_DIR / f"{profile.name}.yaml"
    edited = profile.path is not None and profile.path.resolve() != committed.resolve()
    return (f"profile {profile.name}: about {_duration(measured[stage])} for this notebook on a 2-core laptop "
            f"({_duration(sum(measured.values()))} for all five)"
            + (f"; measured for configs/{profile.name}.yaml, this run reads {profile.path}" if edited else ""))


def write_profile(profile: str | os.PathLike, overrides: dict[str, Any], target: str | os.PathLike) -> Path:
    """The profile with ``overrides`` applied, checked, written as YAML to ``target`` (for notebooks to read)."""
    path, raw = merged(profile, overrides)
    load(profile, overrides)  # validate before anything runs
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"# {path} with --set {', '.join(f'{k}={v!r}' for k, v in overrides.items())}\n"
                      + yaml.safe_dump(raw, sort_keys=False))
    return target
