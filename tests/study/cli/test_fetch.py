"""``lrstudy data fetch`` and ``--data kaggle`` without the network: the one-line error that says
how to download by hand, and the reuse of an earlier download.

Every command runs with Kaggle's first hop pointed at 127.0.0.1 (HTTPS_PROXY), with a private
HOME and caches, so no test can reach Kaggle or read the user's credentials or downloads.
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.trainer.test_scan import write_kaggle_download
from tests.waiting import closed_port
from trainer._fetch import KAGGLE_HANDLE, KAGGLE_PAGE, MENDELEY_DOI, RECORD_NAME, resolve_data


@pytest.fixture
def kagglehub() -> None:
    """The real download code path needs the optional kagglehub (the ``kaggle`` extra)."""
    try:
        import kagglehub  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs kagglehub: install the project with the kaggle extra")
        pytest.skip("kagglehub is not installed (pip install -e '.[kaggle]')")


@pytest.fixture
def refusing_proxy() -> Iterator[int]:
    """A local HTTPS proxy that accepts connections and refuses every tunnel (403), as a
    locked-down network does; its port."""

    class Refuse(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Refuse) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server.server_address[1]
        server.shutdown()


def lrstudy(
    tmp_path: Path, *args: str, proxy_port: int | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """The CLI in ``tmp_path`` with a private HOME and caches, and Kaggle behind a local proxy
    (closed unless ``proxy_port`` names one)."""
    private = ("KAGGLE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(private)}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_CACHE_HOME=str(tmp_path / "xdg"),
        KAGGLEHUB_CACHE=str(tmp_path / "kagglehub"),
    )
    with closed_port() as closed:
        env["HTTPS_PROXY"] = f"http://127.0.0.1:{proxy_port or closed}"
        return subprocess.run(
            [sys.executable, "-m", "study", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=timeout,  # the probe gives up after 10 s: this only guards a regression
            env=env,
        )


def manual_download_error(result: subprocess.CompletedProcess) -> str:
    """The one error line, checked for exit code 2 and the way to download by hand."""
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lrstudy: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    for part in (KAGGLE_HANDLE, KAGGLE_PAGE, MENDELEY_DOI, "pass --data DIR"):
        assert part in errors[0]
    return errors[0]


def write_record(tmp_path: Path, download: Path) -> Path:
    """The record a successful fetch leaves (documented in docs/data.md)."""
    root = download / "chest_xray"
    record = {"handle": KAGGLE_HANDLE, "download": str(download), "root": str(root)}
    (tmp_path / "xdg" / "lrstudy").mkdir(parents=True, exist_ok=True)
    (tmp_path / "xdg" / "lrstudy" / RECORD_NAME).write_text(json.dumps(record))
    return root


def test_offline_fetch_ends_in_one_line_saying_how_to_download_by_hand(
    kagglehub, tmp_path
) -> None:
    for args in (["data", "fetch"], ["data", "fetch", "--dest", str(tmp_path / "dl")]):
        error = manual_download_error(lrstudy(tmp_path, *args))
        assert "cannot be reached (" in error and "Connection refused" in error
    assert not (tmp_path / "dl").exists()
    check = lrstudy(tmp_path, "data", "check", "kaggle", "--json")
    assert "cannot be reached" in manual_download_error(check)


def test_refused_download_fails_inside_kagglehub_in_one_line(
    kagglehub, tmp_path, refusing_proxy
) -> None:
    result = lrstudy(tmp_path, "data", "fetch", proxy_port=refusing_proxy)
    error = manual_download_error(result)
    assert "ProxyError" in error  # kagglehub's own request was made, and refused
    assert "downloading paultimothymooney/chest-xray-pneumonia" in result.stderr
    assert not (tmp_path / "xdg" / "lrstudy" / RECORD_NAME).exists()


def test_without_kagglehub_the_error_says_how_to_install_it(tmp_path) -> None:
    hide = "import sys; sys.modules['kagglehub'] = None; from study.cli import main; "
    result = subprocess.run(
        [sys.executable, "-c", hide + "sys.exit(main(['data', 'fetch']))"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")},
    )
    assert "pip install 'lrstudy[kaggle]'" in manual_download_error(result)


def test_an_earlier_download_is_reused_without_the_network(tmp_path) -> None:
    written = write_kaggle_download(tmp_path / "download")
    root = write_record(tmp_path, tmp_path / "download")
    fetched = lrstudy(tmp_path, "data", "fetch")
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == f"{root}\n"  # one line, for DATA=$(lrstudy data fetch)
    same_dest = lrstudy(tmp_path, "data", "fetch", "--dest", str(tmp_path / "download"))
    assert same_dest.stdout == f"{root}\n", same_dest.stderr
    report = json.loads(lrstudy(tmp_path, "data", "check", "kaggle", "--json").stdout)
    assert report["root"] == str(root)
    assert sum(p["NORMAL"] + p["PNEUMONIA"] for p in report["parts"].values()) == len(
        written.labels
    )
    assert [folder["reason"] for folder in report["ignored"]["folders"]] == [
        "macos", "duplicate"
    ]  # fmt: skip


def test_a_new_destination_force_or_a_vanished_download_downloads_again(
    kagglehub, tmp_path
) -> None:
    write_kaggle_download(tmp_path / "download", parts={"train": (2, 2)})
    write_record(tmp_path, tmp_path / "download")
    manual_download_error(lrstudy(tmp_path, "data", "fetch", "--dest", str(tmp_path / "other")))
    manual_download_error(lrstudy(tmp_path, "data", "fetch", "--force"))
    (tmp_path / "download" / "chest_xray").rename(tmp_path / "moved")
    manual_download_error(lrstudy(tmp_path, "data", "check", "kaggle"))


def test_resolve_data_leaves_every_other_value_alone(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for value in (str(tmp_path), "data/chest_xray", "Kaggle", "./kaggle"):
        assert resolve_data(value) == value
    root = write_kaggle_download(tmp_path / "download", parts={"train": (2, 2)}).root
    write_record(tmp_path, tmp_path / "download")
    assert resolve_data("kaggle") == str(root)


def test_refusal_by_kaggle_names_the_credentials() -> None:
    requests = pytest.importorskip("requests")
    from trainer._fetch import _why

    response = requests.Response()
    response.status_code = 401
    why = _why(requests.HTTPError("401 Client Error: Unauthorized", response=response))
    assert "Kaggle refused the request (401)" in why
    assert "~/.kaggle/kaggle.json" in why and "KAGGLE_USERNAME" in why
    assert _why(ConnectionError("line one\nline two")) == "ConnectionError: line one line two"
