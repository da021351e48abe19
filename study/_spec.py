"""The study spec: one TOML file fixes a study's grid and protocol, checked key by key on load."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study._presets import PAPER, preset_mapping
from trainer import SPLITS, InputError
from trainer._config import TEST_WEIGHTS
from trainer._model import MODELS, OPTIMIZERS

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML through the tomli backport
    import tomli as tomllib

REDUCES = ("last", "best")
OBJECTIVES = ("val_accuracy",)
REQUIRED_AXES = ("learning_rate", "seed")

# Study user attributes that hold the spec a study was created from, and its fingerprint.
SPEC_ATTR = "spec"
FINGERPRINT_ATTR = "spec_fingerprint"
# Where files live differs between machines; what is computed must not. Only the protocol keys
# enter the fingerprint, so a worker on another machine may point these at its own paths.
LOCATION_KEYS = ("study.name", "study.storage", "study.artifacts", "data.root", "data.cache_dir")


@dataclass(frozen=True)
class StudySection:
    """Which study, where it is stored, and what each trial ends with."""

    name: str
    storage: str
    objective: str
    reduce: str
    artifacts: str


@dataclass(frozen=True)
class TrainSection:
    """The training protocol of every cell; a grid axis of the same name overrides a key."""

    model: str
    weights: str
    image_size: int
    epochs: int
    batch_size: int
    eval_batch_size: int
    optimizer: str
    test_weights: str
    deterministic: bool
    mixed_precision: bool
    jit_compile: bool | str


@dataclass(frozen=True)
class DataSection:
    """The dataset and its split; ``root`` and ``cache_dir`` are per-machine locations."""

    root: str | None
    split: str
    split_seed: int
    ratios: tuple[float, float, float]
    limit_per_class: int | None
    cache_dir: str | None
    skip_bad: bool


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
    train: TrainSection
    data: DataSection
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
    ) -> StudySpec:
        """A copy with this machine's locations; None keeps the spec's value."""
        study = self.study
        if storage is not None:
            study = dataclasses.replace(study, storage=storage)
        if artifacts is not None:
            study = dataclasses.replace(study, artifacts=artifacts)
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
        )


def create_from_spec(storage: BaseStorage, spec: StudySpec) -> tuple[optuna.Study, bool]:
    """Create the spec's grid study, or open it when it exists with the same protocol.

    Returns the study and whether this call created it. The spec (without its storage URL, so
    no password is stored) and its fingerprint go into the study's user attributes.

    Raises:
        InputError: the study exists with another protocol (the message names the keys that
            differ), or was not made from a spec.
    """
    from study._grid import create_grid_study, load_grid_study

    name = spec.study.name
    try:
        existing = load_grid_study(storage, name)
    except InputError:
        existing = None
    if existing is None:
        stored = spec.to_dict()
        del stored["study"]["storage"]
        study = create_grid_study(
            storage,
            name,
            {axis: list(values) for axis, values in spec.grid.items()},
            metric=spec.study.objective,
            user_attrs={SPEC_ATTR: stored, FINGERPRINT_ATTR: spec.fingerprint()},
        )
    else:
        study = existing
    # Also when we just created it: a concurrent creator with another spec may have won.
    if study.user_attrs.get(FINGERPRINT_ATTR) != spec.fingerprint():
        differences = protocol_differences(spec_from_study(study, spec.study.storage), spec)
        raise InputError(
            f"study {name!r} already exists with another protocol: {'; '.join(differences)}. "
            "Fix: use the stored values, or a new name with --set study.name=NEW."
        )
    return study, existing is None


def spec_from_study(study: optuna.Study, storage_url: str) -> StudySpec:
    """The spec stored in a study by ``create_from_spec``, with ``storage_url`` filled in."""
    raw = study.user_attrs.get(SPEC_ATTR)
    if not isinstance(raw, dict):
        raise InputError(
            f"study {study.study_name!r} holds no lrstudy spec (it was not made by "
            "`lrstudy create`); use a study that lrstudy created, or create one first."
        )
    raw = copy.deepcopy(raw)
    raw["study"]["storage"] = storage_url
    return spec_from_mapping(raw, source=f"study {study.study_name}")


def protocol_differences(stored: StudySpec, given: StudySpec) -> list[str]:
    """``key (stored X, given Y)`` for each protocol key that differs between two specs."""
    old, new = _flatten(stored.protocol()), _flatten(given.protocol())
    return [
        f"{key} (stored {_short(old.get(key))}, given {_short(new.get(key))})"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> StudySpec:
    """Read a spec file; keys it leaves out take the ``paper`` preset's values."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            f"--spec file {str(path)!r} does not exist; write one with `lrstudy init {path}` "
            "or use --preset paper."
        ) from None
    except OSError as error:
        raise InputError(f"--spec file {str(path)!r} cannot be read: {error.strerror}.") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path}: not valid TOML: {error}; fix the file.") from None
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
    raw = copy.deepcopy(dict(raw))
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    _check_keys(raw, source)
    study = _section(StudySection, raw.get("study", {}), "study", source)
    train = _section(TrainSection, raw.get("train", {}), "train", source)
    data = _section(DataSection, raw.get("data", {}), "data", source)
    worker = _section(WorkerSection, raw.get("worker", {}), "worker", source)
    if worker.grace_s <= worker.heartbeat_s:
        raise InputError(
            f"{source}: worker.grace_s must be larger than worker.heartbeat_s "
            f"({worker.heartbeat_s}); got {worker.grace_s}. Use at least 4 heartbeats, "
            f"e.g. grace_s = {4 * worker.heartbeat_s}."
        )
    grid = _grid(raw.get("grid", {}), source)
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
_Check = Callable[[str, Any, str], Any]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _fail(source: str, key: str, rule: str, value: Any, fix: str | None = None) -> InputError:
    fix = fix or f"set it in the spec or with --set {key}=VALUE"
    return InputError(f"{source}: {key} must be {rule}; got {_short(value)}. Fix: {fix}.")


def _string(source: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, key, "a non-empty string", value)
    return value


def _name(source: str, key: str, value: Any) -> str:
    # The name is also a folder under the artifacts folder, on every machine.
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _fail(
            source,
            key,
            "letters, digits, '.', '_' or '-' (a folder name)",
            value,
            'for example name = "kim-ye-2022-small"',
        )
    return value


def _optional_string(source: str, key: str, value: Any) -> str | None:
    return None if value is None else _string(source, key, value)


def _choice(choices: tuple[str, ...]) -> _Check:
    def check(source: str, key: str, value: Any) -> str:
        if value not in choices:
            allowed = ", ".join(f'"{choice}"' for choice in choices)
            raise _fail(source, key, f"one of {allowed}", value, f"use one of {allowed}")
        return value

    return check


def _integer(minimum: int) -> _Check:
    def check(source: str, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _fail(source, key, f"an integer >= {minimum}", value)
        return value

    return check


def _optional_integer(minimum: int) -> _Check:
    integer = _integer(minimum)

    def check(source: str, key: str, value: Any) -> int | None:
        if value is None:
            return None
        return integer(source, key, value)

    return check


def _boolean(source: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(source, key, "true or false", value)
    return value


def _jit_compile(source: str, key: str, value: Any) -> bool | str:
    if value != "auto" and not isinstance(value, bool):
        raise _fail(source, key, '"auto", true or false', value, 'use "auto", true or false')
    return value


def _positive_number(source: str, key: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _fail(source, key, "a number > 0", value)
    return float(value)


def _ratios(source: str, key: str, value: Any) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise _fail(
            source,
            key,
            "an array of 3 numbers (train, val, test)",
            value,
            "for example ratios = [0.7, 0.15, 0.15]",
        )
    numbers = tuple(
        _positive_number(source, f"{key}[{index}]", v) for index, v in enumerate(value)
    )
    if not math.isclose(sum(numbers), 1.0, abs_tol=1e-6):
        raise _fail(
            source, key, "3 numbers that sum to 1", value, "for example ratios = [0.7, 0.15, 0.15]"
        )
    return numbers  # type: ignore[return-value]


_CHECKS: dict[str, dict[str, _Check]] = {
    "study": {
        "name": _name,
        "storage": _string,
        "objective": _choice(OBJECTIVES),
        "reduce": _choice(REDUCES),
        "artifacts": _string,
    },
    "train": {
        "model": _choice(MODELS),
        "weights": _string,
        "image_size": _integer(1),
        "epochs": _integer(1),
        "batch_size": _integer(1),
        "eval_batch_size": _integer(1),
        "optimizer": _choice(OPTIMIZERS),
        "test_weights": _choice(TEST_WEIGHTS),
        "deterministic": _boolean,
        "mixed_precision": _boolean,
        "jit_compile": _jit_compile,
    },
    "data": {
        "root": _optional_string,
        "split": _choice(SPLITS),
        "split_seed": _integer(0),
        "ratios": _ratios,
        "limit_per_class": _optional_integer(1),
        "cache_dir": _optional_string,
        "skip_bad": _boolean,
    },
    "worker": {
        "heartbeat_s": _integer(1),
        "grace_s": _integer(1),
        "max_retries": _integer(0),
    },
}

# How a cell is computed is no axis: jit_compile changes speed, not what is trained.
_AXIS_CHECKS: dict[str, _Check] = {
    "learning_rate": _positive_number,
    "seed": _integer(0),
    **{key: check for key, check in _CHECKS["train"].items() if key != "jit_compile"},
}


def _check_keys(raw: Mapping[str, Any], source: str) -> None:
    for section, body in raw.items():
        if section not in _SECTIONS:
            raise InputError(
                f"{source}: unknown section [{section}]; allowed sections are "
                f"{', '.join(f'[{name}]' for name in _SECTIONS)}. Fix the section name."
            )
        if not isinstance(body, Mapping):
            raise InputError(
                f"{source}: [{section}] must be a table of keys; got {_short(body)}. "
                f"Fix: write a [{section}] section with key = value lines."
            )
        allowed = _AXIS_CHECKS if section == "grid" else _CHECKS[section]
        for key in body:
            if key not in allowed:
                raise InputError(
                    f"{source}: unknown key {section}.{key}; allowed keys in [{section}] are "
                    f"{', '.join(allowed)}. Fix the key name."
                )


def _section(cls: type, body: Mapping[str, Any], section: str, source: str) -> Any:
    values = {}
    for key, check in _CHECKS[section].items():
        if key not in body:
            raise InputError(
                f"{source}: {section}.{key} is missing. Fix: add it to [{section}] "
                f"or pass --set {section}.{key}=VALUE."
            )
        values[key] = check(source, f"{section}.{key}", body[key])
    return cls(**values)


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
            raise _fail(
                source,
                key,
                "a non-empty array of values",
                values,
                f"for example {axis} = {_short(PAPER['grid'].get(axis, [8, 32]))}",
            )
        check = _AXIS_CHECKS[axis]
        checked = tuple(check(source, f"{key}[{index}]", v) for index, v in enumerate(values))
        if len(set(checked)) != len(checked):
            raise _fail(
                source, key, "an array without repeated values", values, "list each value once"
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


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, (list, tuple)) else json.dumps(list(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
