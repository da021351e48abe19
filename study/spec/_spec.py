"""The study spec: one TOML file fixes a study's grid and protocol, checked key by key on load."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.spec._presets import PAPER, preset_mapping
from trainer import _checks
from trainer._config import TrainConfig, train_keys
from trainer._dataset import DataConfig
from trainer._errors import ConfigError, InputError, short

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML through the tomli backport
    import tomli as tomllib

REDUCES = ("last", "best")
OBJECTIVES = ("val_accuracy",)
REQUIRED_AXES = ("learning_rate", "seed")

# Where files live differs between machines; what is computed must not. Only the protocol keys
# enter the fingerprint, so a worker on another machine may point these at its own paths.
LOCATION_KEYS = (
    "study.name",
    "study.storage",
    "study.artifacts",
    "study.artifact_store",
    "data.root",
    "data.cache_dir",
)
# Keys of the spec's own sections added after studies were stored without them, with the value
# that means what those studies did (trainer._config.KEYS_ADDED_LATER has the trainer's).
SPEC_KEYS_ADDED_LATER: dict[str, dict[str, Any]] = {"study": {"artifact_store": ""}}


@dataclass(frozen=True)
class StudySection:
    """Which study, where it is stored, and what each trial ends with."""

    name: str
    storage: str
    objective: str
    reduce: str
    artifacts: str
    artifact_store: str


@dataclass(frozen=True)
class WorkerSection:
    """How workers detect a dead trial and how often a failing cell is retried."""

    heartbeat_s: int
    grace_s: int
    max_retries: int


@dataclass(frozen=True)
class StudySpec:
    """A whole study: its sections, and the grid as axis -> values (learning_rate, seed first)."""

    study: StudySection
    grid: dict[str, tuple[Any, ...]]
    train: TrainConfig
    data: DataConfig
    worker: WorkerSection

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The spec as plain JSON-safe values (unset optional keys are None)."""
        out = {
            name: _jsonable(dataclasses.asdict(getattr(self, name)))
            for name in ("study", "train", "data", "worker")
        }
        out["grid"] = {axis: list(values) for axis, values in self.grid.items()}
        return {name: out[name] for name in _SECTIONS}

    def protocol(self) -> dict[str, dict[str, Any]]:
        """The keys that decide the results: everything but locations and worker settings."""
        full = self.to_dict()
        protocol: dict[str, dict[str, Any]] = {}
        for section in ("study", "grid", "train", "data"):
            protocol[section] = {
                key: value
                for key, value in full[section].items()
                if f"{section}.{key}" not in LOCATION_KEYS
            }
        # The same cells in another order are the same grid.
        protocol["grid"] = {
            axis: sorted(values) for axis, values in sorted(protocol["grid"].items())
        }
        return protocol

    def fingerprint(self) -> str:
        """A stable hash of the protocol: equal for equal protocols on any machine and version."""
        text = json.dumps(self.protocol(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def cells(self) -> list[dict[str, Any]]:
        """Every grid point as a params mapping, in grid order."""
        axes = list(self.grid)
        return [
            dict(zip(axes, values, strict=True))
            for values in itertools.product(*self.grid.values())
        ]

    def with_locations(
        self,
        *,
        storage: str | None = None,
        data_root: str | None = None,
        cache_dir: str | None = None,
        artifacts: str | None = None,
        artifact_store: str | None = None,
    ) -> StudySpec:
        """A copy with this machine's locations; None keeps the spec's value."""
        study = self.study
        if storage is not None:
            study = dataclasses.replace(study, storage=storage)
        if artifacts is not None:
            study = dataclasses.replace(study, artifacts=artifacts)
        if artifact_store is not None:
            study = dataclasses.replace(study, artifact_store=artifact_store)
        data = self.data
        if data_root is not None:
            data = dataclasses.replace(data, root=data_root)
        if cache_dir is not None:
            data = dataclasses.replace(data, cache_dir=cache_dir)
        return dataclasses.replace(self, study=study, data=data)

    def resolved(self) -> StudySpec:
        """A copy whose relative paths are made absolute against the current directory.

        A study stores its spec once; workers started from other folders must find the same
        dataset and artifacts on this machine.
        """
        return self.with_locations(
            data_root=_absolute(self.data.root),
            cache_dir=_absolute(self.data.cache_dir),
            artifacts=_absolute(self.study.artifacts),
            artifact_store=_absolute(self.study.artifact_store)
            if self.study.artifact_store
            else "",
        )


def protocol_differences(stored: StudySpec, given: StudySpec) -> list[str]:
    """``key (stored X, given Y)`` for each protocol key that differs between two specs."""
    old, new = _flatten(stored.protocol()), _flatten(given.protocol())
    return [
        f"{key} (stored {short(old.get(key))}, given {short(new.get(key))})"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> StudySpec:
    """Read a spec file; keys it leaves out take the ``paper`` preset's values."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise InputError(
            f"--spec file {str(path)!r} does not exist; write one with `lrstudy init {path}` "
            "or use --preset paper."
        ) from error
    except OSError as error:
        raise InputError(f"--spec file {str(path)!r} cannot be read: {error.strerror}.") from error
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path}: not valid TOML: {error}; fix the file.") from error
    base = preset_mapping("paper")
    # A study name is its identity: a file must choose one, never inherit the paper's.
    del base["study"]["name"]
    return spec_from_mapping(_merge(base, raw), overrides, source=str(path))


def load_preset(name: str, overrides: Iterable[str] = ()) -> StudySpec:
    """A built-in spec (``paper``), with ``--set`` overrides applied."""
    return spec_from_mapping(preset_mapping(name), overrides, source=f"preset {name}")


def spec_from_mapping(
    raw: Mapping[str, Any], overrides: Iterable[str] = (), *, source: str = "spec"
) -> StudySpec:
    """Validate a complete spec mapping (a loaded file, a preset, or one stored in a study)."""
    spec: dict[str, Any] = copy.deepcopy(dict(raw))
    for text in overrides:
        section, key, value = parse_override(text)
        spec.setdefault(section, {})[key] = value
    _check_keys(spec, source)
    study = _section(StudySection, spec.get("study", {}), "study", source)
    train = _section(TrainConfig, spec.get("train", {}), "train", source)
    data = _section(DataConfig, spec.get("data", {}), "data", source)
    worker = _section(WorkerSection, spec.get("worker", {}), "worker", source)
    if worker.grace_s <= worker.heartbeat_s:
        raise InputError(
            f"{source}: worker.grace_s must be larger than worker.heartbeat_s "
            f"({worker.heartbeat_s}); got {worker.grace_s}. Use at least 4 heartbeats, "
            f"e.g. grace_s = {4 * worker.heartbeat_s}."
        )
    grid = _grid(spec.get("grid", {}), source)
    return StudySpec(study=study, grid=grid, train=train, data=data, worker=worker)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=VALUE`` -> (section, key, value); VALUE is TOML, else a plain string."""
    name, sep, value_text = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key or "." in key:
        raise InputError(
            f"--set expects section.key=VALUE; got {text!r}. "
            "Example: --set train.epochs=2 --set 'grid.seed=[0]'."
        )
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        # A bare path or word (data.root=/data/x) is meant as a string; types are checked later.
        value = value_text
    return section, key, value


# --- validation ---------------------------------------------------------------------------

_SECTIONS = ("study", "grid", "train", "data", "worker")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _name(key: str, value: Any) -> str:
    # The name is also a folder under the artifacts folder, on every machine.
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(
            key,
            "letters, digits, '.', '_' or '-' (a folder name)",
            value,
            'for example name = "kim-ye-2022-small"',
        )
    return value


def _store_path(key: str, value: Any) -> str:
    # "" keeps the store in the study's folder; anything else is a folder of its own.
    if not isinstance(value, str):
        raise ConfigError(key, 'a folder path, or "" for the study\'s folder', value)
    return value


# The spec's own sections; [train] and [data] are the trainer's configs, checked by them.
_OWN_CHECKS: dict[str, dict[str, _checks.Check]] = {
    "study": {
        "name": _name,
        "storage": _checks.string,
        "objective": _checks.choice(OBJECTIVES),
        "reduce": _checks.choice(REDUCES),
        "artifacts": _checks.string,
        "artifact_store": _store_path,
    },
    "worker": {
        "heartbeat_s": _checks.integer(1),
        "grace_s": _checks.integer(1),
        "max_retries": _checks.integer(0),
    },
}
_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    **{section: tuple(checks) for section, checks in _OWN_CHECKS.items()},
    "train": tuple(train_keys()),
    "data": tuple(item.name for item in dataclasses.fields(DataConfig)),
}
_AXIS_CHECKS: dict[str, _checks.Check] = {
    "learning_rate": _checks.positive_number,
    "seed": _checks.integer(0),
    **{key: item.metadata["check"] for key, item in train_keys(axes_only=True).items()},
}


def _fail(source: str, key: str, error: ConfigError) -> InputError:
    axis, indexed, _ = key.partition("[")  # grid.learning_rate[0]: the axis is set whole
    where = f"'{axis}=[VALUE, ...]'" if indexed else f"{key}=VALUE"
    fix = error.fix or f"set it in the spec or with --set {where}"
    got = short(error.value)
    return InputError(f"{source}: {key} must be {error.rule}; got {got}. Fix: {fix}.")


def _check_keys(raw: Mapping[str, Any], source: str) -> None:
    for section, body in raw.items():
        if section not in _SECTIONS:
            raise InputError(
                f"{source}: unknown section [{section}]; allowed sections are "
                f"{', '.join(f'[{name}]' for name in _SECTIONS)}. Fix the section name."
            )
        if not isinstance(body, Mapping):
            raise InputError(
                f"{source}: [{section}] must be a table of keys; got {short(body)}. "
                f"Fix: write a [{section}] section with key = value lines."
            )
        allowed = _AXIS_CHECKS if section == "grid" else _SECTION_KEYS[section]
        for key in body:
            if section == "grid" and key in _SECTION_KEYS["train"] and key not in allowed:
                raise InputError(
                    f"{source}: train.{key} cannot be a grid axis: it changes only speed, or a "
                    f"worker sets it once for every cell it runs. Fix: set train.{key} to one "
                    "value (a study of each value, by --set study.name=NEW, compares them)."
                )
            if key not in allowed:
                raise InputError(
                    f"{source}: unknown key {section}.{key}; allowed keys in [{section}] are "
                    f"{', '.join(allowed)}. Fix the key name."
                )


def _section(cls: type, body: Mapping[str, Any], section: str, source: str) -> Any:
    for key in _SECTION_KEYS[section]:
        if key not in body:
            raise InputError(
                f"{source}: {section}.{key} is missing. Fix: add it to [{section}] "
                f"or pass --set {section}.{key}=VALUE."
            )
    values = dict(body)
    try:
        for key, check in _OWN_CHECKS.get(section, {}).items():
            values[key] = check(key, body[key])
        return cls(**values)
    except ConfigError as error:
        raise _fail(source, f"{section}.{error.key}", error) from error


def _grid(body: Mapping[str, Any], source: str) -> dict[str, tuple[Any, ...]]:
    for axis in REQUIRED_AXES:
        if axis not in body:
            raise InputError(
                f"{source}: grid.{axis} is missing; the grid needs learning_rate and seed. "
                f"Fix: add {axis} = [...] to [grid]."
            )
    axes = [*REQUIRED_AXES, *(axis for axis in body if axis not in REQUIRED_AXES)]
    grid: dict[str, tuple[Any, ...]] = {}
    for axis in axes:
        values = body[axis]
        key = f"grid.{axis}"
        if not isinstance(values, (list, tuple)) or not values:
            example = f"for example {axis} = {short(PAPER['grid'].get(axis, [8, 32]))}"
            raise _fail(
                source, key, ConfigError(key, "a non-empty array of values", values, example)
            )
        check = _AXIS_CHECKS[axis]
        try:
            checked = tuple(check(f"{key}[{index}]", v) for index, v in enumerate(values))
        except ConfigError as error:
            raise _fail(source, error.key, error) from error
        if len(set(checked)) != len(checked):
            raise _fail(
                source,
                key,
                ConfigError(
                    key, "an array without repeated values", values, "list each value once"
                ),
            )
        grid[axis] = checked
    return grid


def _merge(base: dict[str, Any], raw: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for section, body in raw.items():
        if isinstance(body, Mapping) and isinstance(merged.get(section), dict):
            merged[section].update(body)
        else:
            merged[section] = body  # checked, with a clear message, by spec_from_mapping
    return merged


def _flatten(mapping: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, body in mapping.items()
        for key, value in body.items()
    }


def _jsonable(body: dict[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in body.items()}


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())
