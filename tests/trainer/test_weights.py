"""The ImageNet weights download: once per machine, verified, never half a file in place."""

from __future__ import annotations

import hashlib
import http.server
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer._errors import InputError
from trainer._weights import IMAGENET_FILE, fetch_imagenet_weights, keras_models_dir

CONTENT = b"HDF\x89 not really weights, but bytes with a known hash" * 1000
MD5 = hashlib.md5(CONTENT).hexdigest()


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server holding the weights file; yields its URL and the paths it served."""
    served: list[str] = []
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / IMAGENET_FILE).write_bytes(CONTENT)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(tmp_path / "www"), **kwargs)

        def do_GET(self) -> None:
            served.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", served
    server.shutdown()


def _fetch(keras_home: str, url: str) -> str:
    import os

    os.environ["KERAS_HOME"] = keras_home
    return str(fetch_imagenet_weights(origin=url, md5=MD5))


def test_racing_processes_download_once(
    tmp_path: Path, origin: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, served = origin
    home = str(tmp_path / "keras")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        paths = pool.starmap(_fetch, [(home, url)] * 4)
    assert served == [f"/{IMAGENET_FILE}"]
    assert len(set(paths)) == 1 and Path(paths[0]).read_bytes() == CONTENT
    monkeypatch.setenv("KERAS_HOME", home)
    assert Path(paths[0]) == keras_models_dir() / IMAGENET_FILE  # where Keras looks
    assert sorted(p.name for p in keras_models_dir().iterdir()) == [
        f".{IMAGENET_FILE}.lock",
        IMAGENET_FILE,
    ]


def test_a_file_with_another_hash_is_refused_and_not_kept(
    tmp_path: Path, origin: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(
        InputError,
        match=r"gave a file with MD5 \w+, not Keras's 0+ \(a proxy's error page\?\); check",
    ):
        fetch_imagenet_weights(origin=origin[0], md5="0" * 32)
    assert [p.name for p in keras_models_dir().iterdir()] == [f".{IMAGENET_FILE}.lock"]


def test_an_unreachable_origin_is_one_line_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_origin: str
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("LRSTUDY_WEIGHTS_ORIGIN", closed_origin)
    with pytest.raises(InputError) as error:
        fetch_imagenet_weights(md5=MD5)
    message = str(error.value)
    assert "\n" not in message and "cannot download" in message
    assert 'use weights "none"' in message
