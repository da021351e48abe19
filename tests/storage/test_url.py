"""Storage URLs: masking and the one-line errors for URLs that cannot work."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from storage import StorageError, mask_url, open_storage, study_lock


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://ana:s3cret@db:5432/lr", "postgresql://ana:***@db:5432/lr"),
        ("postgresql+psycopg://ana:p@ss@db/lr", "postgresql+psycopg://ana:***@db/lr"),
        (
            "postgresql://ana@db/lr?password=s3cret&sslmode=require",
            "postgresql://ana@db/lr?password=***&sslmode=require",
        ),
        ("postgresql://ana@db/lr", "postgresql://ana@db/lr"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("not a url :: at all", "not a url :: at all"),
        ("://:s3cret@", "://:***@"),
        # SQLAlchemy takes "/", "?" and "#" as part of a password.
        ("postgresql://ana:pa/ss@db/lr", "postgresql://ana:***@db/lr"),
        ("postgresql://ana:pa?ss@db:5432/lr", "postgresql://ana:***@db:5432/lr"),
        ("postgresql://ana:pa#ss@db/lr", "postgresql://ana:***@db/lr"),
        # A raw "@" in the user name, slashes gone wrong, no scheme, a line break, libpq's
        # sslpassword: each once printed the password as it was.
        ("postgresql://ana@lab:s3cret@db/lr", "postgresql://ana@lab:***@db/lr"),
        ("postgresql:/ana:s3cret@db/lr", "postgresql:/ana:***@db/lr"),
        ("ana:s3cret@db:5432/lr", "ana:***@db:5432/lr"),
        ("postgresql://ana:s3\ncret@db/lr", "postgresql://ana:***@db/lr"),
        (
            "postgresql://ana@db/lr?sslpassword=s3cret&sslmode=require",
            "postgresql://ana@db/lr?sslpassword=***&sslmode=require",
        ),
        ("postgresql://ana@db:5432/lr", "postgresql://ana@db:5432/lr"),
    ],
)
def test_mask_url_hides_passwords_and_keeps_the_rest(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("no-scheme-here", "is malformed"),
        ("mysql://ana:s3cret@db/lr", "does not support"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("postgresql://ana:s3cret@db:5432", "names no database"),
        ("postgresql://ana:s3cret@db:notaport/lr", "malformed (check the host and the port)"),
        ("postgresql://ana:s3cret@[::1/lr", "malformed (check the host and the port)"),
        # The password ends at its first "@": the rest must not be quoted as a host.
        ("postgresql://ana:s3cret@tail@db:5432/lr", "holds '@' more than once; write an '@'"),
        ("ana:s3cret@db:5432/lr", "is malformed"),
        ("postgresql:/ana:s3cret@db/lr", "is malformed"),
    ],
)
def test_bad_urls_fail_with_one_masked_line(url: str, expected: str) -> None:
    with pytest.raises(StorageError) as caught:
        open_storage(url)
    message = str(caught.value)
    assert expected in message
    assert "s3cret" not in message and "tail" not in message
    assert "\n" not in message


def test_the_sqlite_uri_form_creates_then_reopens_its_file(tmp_path: Path) -> None:
    url = f"sqlite:///file:{tmp_path / 'u.db'}?mode=rwc&uri=true"
    optuna.create_study(storage=open_storage(url), study_name="s")
    assert (tmp_path / "u.db").is_file()
    reopened = open_storage(url, existing=True)
    assert [s.study_name for s in reopened.get_all_studies()] == ["s"]
    with study_lock(reopened, "s"):  # next to the file, for every worker whatever its folder
        assert [p.name.startswith(".u.db.") for p in tmp_path.glob(".*.lock")] == [True]
    with pytest.raises(StorageError, match="names no existing database file"):
        open_storage(f"sqlite:///file:{tmp_path / 'other.db'}?uri=true", existing=True)


def test_sqlite_in_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "deeper"
    with pytest.raises(StorageError, match="does not exist; create it first") as caught:
        open_storage(f"sqlite:///{missing / 'study.db'}")
    assert str(missing) in str(caught.value)
    assert not missing.exists()


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are not the tables you are looking for\n" * 100)
    with pytest.raises(StorageError, match="not a database"):
        open_storage(f"sqlite:///{path}")


@pytest.mark.parametrize("value", [0, -5, 1.5, True])
def test_heartbeat_must_be_positive_whole_seconds(tmp_path: Path, value: object) -> None:
    with pytest.raises(StorageError, match="heartbeat_s must be a positive whole number"):
        open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_s=value)  # type: ignore[arg-type]


def test_grace_must_outlast_a_heartbeat(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"grace_s \(2\) must be longer than heartbeat_s \(2\)"):
        open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_s=2, grace_s=2)
