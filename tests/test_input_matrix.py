"""Every user mistake the issue lists: exit code 2, one error line, nothing changed anywhere.

One table, one row per mistake; adding a case is one line in ``ROWS``. Most rows run the CLI in
this process (``study.cli.main``), the rows marked ``SUB`` through a real ``lrstudy``
subprocess, which proves the exit code, the absence of a traceback and that log lines are the
only other thing on stderr. Placeholders in braces name the files and URLs ``world`` prepares.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from study.cli import main
from tests.conftest import write_dataset

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret-Pw"  # in every URL a row passes, and never in any output
SUB = True


class Row(NamedTuple):
    argv: str  # shlex-split after the placeholders are filled in
    message: str  # regex searched in the one error line
    subprocess: bool = False


QUICK = (
    "--data {ds} --storage {db} --set 'train.model=\"small_cnn\"' --set 'train.weights=\"none\"' "
    "--set train.image_size=32 --set train.epochs=1 --set 'data.split=\"kaggle\"' "
    "--set study.name=quick --set data.cache_dir={tmp}/cache --set study.artifacts={tmp}/art"
)

ROWS = [
    # data folder
    Row("data check {tmp}/nowhere", r"DATA must be a folder.*'{tmp}/nowhere' does not exist"),
    Row("data check {empty}", r"DATA '{empty}' holds neither train/val/test nor NORMAL/PNEU"),
    Row("create {quick} --data {tmp}/nowhere", r"'{tmp}/nowhere' is not a folder", SUB),
    Row("data check {noclass}", r"class folder 'train/PNEUMONIA' is missing in DATA"),
    Row("data check {bad}", r"1 image\(s\) cannot be decoded: train/PNEUMONIA/person9999", SUB),
    Row(
        "data check {ds} --split folds",
        r'--split must be one of "kaggle", "paper", "ratios", "paper-by-image"; got .fo',
    ),
    Row(
        "data check {ds} --split ratios --ratios 0.5,0.2,0.2",
        r"--ratios must be 3 numbers that sum to 1; got \[0.5, 0.2,",
    ),
    Row("create {quick} --set 'data.ratios=[0.5, 0.2, 0.2]'", r"data.ratios must be 3 numbers"),
    Row(
        "data check {ds} --limit-per-class 0", r"--limit-per-class must be an integer >= 1; got 0"
    ),
    Row("create {quick} --set data.limit_per_class=0", r"data.limit_per_class must be an int"),
    # learning rate, seed, epochs, batch size, image size
    Row("train {ds} --lr 0 --seed 0", r"--lr must be a number > 0; got 0.0"),
    Row("train {ds} --lr -0.01 --seed 0", r"--lr must be a number > 0; got -0.01"),
    Row("train {ds} --lr nan --seed 0", r"--lr must be a number > 0; got nan"),
    Row("train {ds} --lr fast --seed 0", r"argument --lr: invalid float value: 'fast'", SUB),
    Row("create {quick} --set 'grid.learning_rate=[0]'", r"grid.learning_rate\[0\] must be a n"),
    Row("create {quick} --set 'grid.learning_rate=[-1.0]'", r"learning_rate\[0\] must be a .*-1"),
    Row("create {quick} --set 'grid.learning_rate=[nan]'", r"learning_rate\[0\] must be a .*nan"),
    Row("create {quick} --set 'grid.learning_rate=[\"x\"]'", r"learning_rate\[0\] must be .*'x'"),
    Row("train {ds} --lr 0.1 --seed 1.5", r"argument --seed: invalid int value: '1.5'"),
    Row("create {quick} --set 'grid.seed=[0.5]'", r"grid.seed\[0\] must be an integer >= 0; got"),
    Row("train {ds} --lr 0.1 --seed 0 --epochs 0", r"--epochs must be an integer >= 1"),
    Row("create {quick} --set train.epochs=0", r"train.epochs must be an integer >= 1; got 0"),
    Row("train {ds} --lr 0.1 --seed 0 --batch-size 0", r"--batch-size must be an integer >= 1"),
    Row("create {quick} --set train.batch_size=0", r"train.batch_size must be an integer >= 1"),
    Row(
        "train {ds} --lr 0.1 --seed 0 --image-size 74",
        r"--image-size must be an integer >= 75 for inception_v3; got 74",
    ),
    Row(
        "create {quick} --set 'train.model=\"inception_v3\"' --set train.image_size=74",
        r"train\.image_size must be an integer >= 75 for inception_v3; got 74\. "
        r"Fix: .*--set train\.image_size",
    ),
    # model, optimizer, backend
    Row("train {ds} --lr 0.1 --seed 0 --model resnet", r"--model must be one of.*resn"),
    Row("create {quick} --set 'train.model=\"resnet\"'", r"train.model must be one of .*'resnet'"),
    Row("train {ds} --lr 0.1 --seed 0 --optimizer adagrad", r"--optimizer must be one of"),
    Row("create {quick} --set 'train.optimizer=\"adagrad\"'", r"train.optimizer must be one of"),
    Row("run {quick} --backend torch", r"argument --backend: invalid choice: 'torch'"),
    # spec file
    Row("create {quick} --spec {tmp}/absent.toml", r"--spec file '{tmp}/absent.toml' does not ex"),
    Row("create {quick} --spec {spec_not_toml}", r"{spec_not_toml}: not valid TOML", SUB),
    Row("create {quick} --spec {spec_unknown_key}", r"unknown key train.epoch; allowed keys"),
    Row("create {quick} --spec {spec_wrong_type}", r"train.batch_size must be an int.*'eight'"),
    Row("create {quick} --set 'study.name=\"../up\"'", r"study.name must be letters.*'../up'"),
    # storage
    Row("status --storage not-a-url --study quick", r"storage URL 'not-a-url' is malformed"),
    Row(f"status --storage postgresql://a:{SECRET}@127.0.0.1:nope/lr --study quick", r"malformed"),
    Row(f"status --storage postgresql://a:{SECRET}@x@127.0.0.1/lr --study quick", r"as %40"),
    Row("status --storage {pg_wrong} --study quick", r":\*\*\*@127.*password authentication", SUB),
    Row("create {quick} --storage {pg_wrong}", r"cannot open storage .*:\*\*\*@.*check the user"),
    Row("status --storage sqlite:///{tmp}/typo.db --study quick", r"names no existing database"),
    Row("status --storage {db} --study nope", r"study 'nope' not found in sqlite:///"),
    Row("export --storage {db} --study nope", r"study 'nope' not found in sqlite:///"),
    Row("create {quick} --set 'grid.seed=[0]'", r"another protocol: grid.seed \(stor"),
    # an axis is set whole, and a fix is said once
    Row("create {quick} --set 'grid.learning_rate=[-0.1]'", r"--set 'grid\.learning_rate=\[VAL"),
    Row("create {quick} --set 'grid.seed=[]'", r"\[\]\. Fix: for example seed = \[0, 1, 2\]\.$"),
    # a worker sets its deterministic kernels once: a grid cannot vary them
    Row("create {quick} --set 'grid.deterministic=[true]'", r"ministic cannot be a grid axis"),
    Row("create {quick} --set 'grid.backend=[\"jax\"]'", r"train.backend cannot be a grid axis"),
    # workers, dashboard, export, output folders
    Row("launch --storage {db} --study quick --gpus 99", r"--gpus names GPU 99, which does not "),
    Row("launch --storage {db} --study quick --gpus 0 --per-gpu 0", r"--per-gpu must be an int"),
    Row("run {quick} --workers 1 --per-gpu 0", r"--per-gpu must be an integer >= 1; got 0"),
    Row("launch --storage {db} --study quick --workers 1 --per-gpu 2", r"drop --per-gpu, or use"),
    Row("dashboard --storage {db} --port {busy_port}", r"--port {busy_port} is already in", SUB),
    Row("export --storage {db} --study quick --format xml", r"argument --format: invalid choice"),
    Row("export --storage {db} --study quick --out /proc", r"--out '/proc' cannot be writ", SUB),
    Row("export --storage {db} --study quick --out {file}/sub", r"cannot be made a folder"),
    Row("init /proc/lrstudy.toml", r"FILE '/proc/lrstudy.toml' cannot be written"),
]

# What a run may leave behind without changing anything: SQLite's WAL index and lock files.
_TRANSIENT = re.compile(r"(-wal|-shm|\.lock)$")
_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")
_USAGE = re.compile(r"^(usage: |\s+\S)")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The files, study and URLs the rows refer to; the rows must leave all of them as found."""
    tmp = tmp_path_factory.mktemp("matrix")
    write_dataset(tmp / "ds")
    write_dataset(tmp / "noclass")
    for part in ("train", "val", "test"):
        for image in (tmp / "noclass" / part / "PNEUMONIA").iterdir():
            image.unlink()
        (tmp / "noclass" / part / "PNEUMONIA").rmdir()
    write_dataset(tmp / "bad", corrupt=True)
    (tmp / "empty").mkdir()
    (tmp / "file").write_text("a file, not a folder\n")
    specs = {
        "spec_not_toml": "[study\nname = quick\n",
        "spec_unknown_key": '[study]\nname = "quick"\n[train]\nepoch = 2\n',
        "spec_wrong_type": '[study]\nname = "quick"\n[train]\nbatch_size = "eight"\n',
    }
    for name, text in specs.items():
        (tmp / f"{name}.toml").write_text(text)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values = {
            "tmp": str(tmp),
            "ds": str(tmp / "ds"),
            "noclass": str(tmp / "noclass"),
            "bad": str(tmp / "bad"),
            "empty": str(tmp / "empty"),
            "file": str(tmp / "file"),
            "db": f"sqlite:///{tmp / 'study.db'}",
            "busy_port": str(busy.getsockname()[1]),
            **{name: str(tmp / f"{name}.toml") for name in specs},
        }
        values["quick"] = QUICK.format(**values)
        assert main(["create", *shlex.split(values["quick"])]) == 0
        yield values


@pytest.mark.parametrize("row", ROWS, ids=[f"{i}-{row.argv.split(' {')[0]}" for i, row in
                                           enumerate(ROWS)])  # fmt: skip
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    row: Row,
    world: dict[str, str],
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = dict(world)
    if "{pg_wrong}" in row.argv:
        server = request.getfixturevalue("postgres_server")
        values["pg_wrong"] = server.url(password=SECRET)
    argv = shlex.split(row.argv.format(**values))
    message = row.message.format(**{k: re.escape(v) for k, v in values.items()})
    monkeypatch.delenv("LRSTUDY_STORAGE", raising=False)
    before = _snapshot(Path(world["tmp"]))
    if row.subprocess:
        done = subprocess.run(
            [sys.executable, "-m", "study", *argv],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            env={k: v for k, v in os.environ.items() if k != "LRSTUDY_STORAGE"},
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's own errors
            code = exit.code
        out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not _LOG_LINE.match(line)]
    # argparse prints its usage block above its one error line; we print only the error.
    errors = [line for line in lines if not _USAGE.match(line)]
    assert len(errors) == 1, err
    assert re.match(r"lrstudy( \w+)?: error: ", errors[0]), errors[0]
    assert re.search(message, errors[0]), errors[0]
    assert SECRET not in out + err
    assert _snapshot(Path(world["tmp"])) == before


def _snapshot(folder: Path) -> dict[str, str]:
    """Hash of every file under ``folder`` and of every row of its SQLite databases."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not _TRANSIENT.search(path.name):
            relative = str(path.relative_to(folder))
            if path.suffix == ".db":
                files[relative] = _rows(path)
            else:
                files[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            files[str(path.relative_to(folder)) + "/"] = "folder"
    return files


def _rows(database: Path) -> str:
    """The database's content: its file bytes change with WAL checkpoints, its rows must not."""
    digest = hashlib.sha256()
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        listed = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = sorted(name for (name,) in listed)
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}" ORDER BY 1'):
                digest.update(repr((table, row)).encode())
    connection.close()
    return digest.hexdigest()
