"""The Kaggle dataset, downloaded once per machine (``lrstudy data fetch``, ``--data kaggle``)."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import urllib.parse
import urllib.request

from filelock import FileLock

from trainer._atomic import write_atomic
from trainer._cache import default_cache_dir
from trainer._errors import InputError
from trainer._scan import scan

_logger = logging.getLogger(__name__)

KAGGLE = "kaggle"  # the DATA value that stands for the downloaded dataset
KAGGLE_HANDLE = "paultimothymooney/chest-xray-pneumonia"
KAGGLE_PAGE = f"https://www.kaggle.com/datasets/{KAGGLE_HANDLE}"
MENDELEY_DOI = "doi:10.17632/rscbjbr9sj.2"
KAGGLE_API = ("api.kaggle.com", 443)  # the first host kagglehub asks
RECORD_NAME = "kaggle-download.json"  # in the lrstudy cache folder: where the last fetch went
PROBE_SECONDS = 10.0
BY_HAND = (
    f"download it by hand from {KAGGLE_PAGE} (or Mendeley Data {MENDELEY_DOI}), "
    "unzip it and pass --data DIR"
)


def resolve_data(value: str) -> str:
    """DATA as given, or for ``kaggle`` the downloaded dataset's folder.

    The first ``kaggle`` downloads it (see ``fetch_kaggle``); every later one reuses that
    download without touching the network.

    Raises:
        InputError: ``kaggle`` was asked for, no earlier download is there, and downloading
            fails (no kagglehub, no network, refused).
    """
    if value != KAGGLE:
        return value
    recorded = _recorded_root()
    if recorded is not None:
        _logger.info("--data kaggle: the download at %s", recorded)
        return recorded
    return fetch_kaggle()


def fetch_kaggle(dest: str | None = None, *, force: bool = False) -> str:
    """Download the Kaggle chest X-ray dataset with kagglehub, unless done before; return the
    dataset folder (the ``chest_xray`` holding train/val/test).

    Note:
        Processes that ask together download once: the first holds a file lock in the lrstudy
        cache folder while it downloads, the others then find its record and reuse it.

    Args:
        dest: Folder to download into. Defaults to `None`, kagglehub's cache
            (``~/.cache/kagglehub``, or ``$KAGGLEHUB_CACHE``).
        force: Download again even when an earlier download is there. Defaults to `False`.

    Raises:
        InputError: kagglehub is not installed, Kaggle cannot be reached or refuses, or the
            download does not hold the dataset. The message says how to download by hand.
    """
    dest = None if dest is None else os.path.abspath(os.path.expanduser(dest))
    with FileLock(_state_path("kaggle-download.lock")):
        recorded = _read_record()
        if (
            recorded is not None
            and dest in (None, recorded["download"])
            and not force
            and os.path.isdir(recorded["root"])
        ):
            _logger.info("the Kaggle dataset is already at %s", recorded["root"])
            return recorded["root"]
        download = _download(dest, force)
        try:
            scanned = scan(download)
        except InputError as error:
            raise InputError(
                f"the Kaggle download at {download!r} is not the chest X-ray dataset ({error}); "
                f"{BY_HAND}."
            ) from error
        record = {"handle": KAGGLE_HANDLE, "download": download, "root": scanned.root}
        write_atomic(_state_path(RECORD_NAME), json.dumps(record, indent=2))
    ignored = ", ".join(
        f"{folder.path}/ ({folder.reason}, {folder.files} files)"
        for folder in scanned.ignored_folders
    )
    _logger.info(
        "the Kaggle dataset is at %s: %d images; left out: %s",
        scanned.root,
        len(scanned.records),
        ignored or "nothing",
    )
    return scanned.root


def _download(dest: str | None, force: bool) -> str:
    try:
        import kagglehub
    except ImportError as error:
        raise InputError(
            "downloading the dataset needs kagglehub, which is not installed; run "
            f"pip install 'lrstudy[kaggle]', or {BY_HAND}."
        ) from error
    # kagglehub logs to stdout, which carries our answer (the folder, JSON): move it to stderr.
    for handler in logging.getLogger("kagglehub").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)
    problem = _unreachable(*_first_hop())
    if problem is not None:
        raise InputError(
            f"cannot download the Kaggle dataset {KAGGLE_HANDLE}: {problem}; {BY_HAND}."
        )
    _logger.info(
        "downloading %s (about 2.3 GB) into %s", KAGGLE_HANDLE, dest or "kagglehub's cache"
    )
    try:
        return kagglehub.dataset_download(KAGGLE_HANDLE, force_download=force, output_dir=dest)
    except Exception as error:
        # kagglehub raises requests errors, its own, ValueError for a bad credentials file and
        # OSError for a full disk: each leaves the user the same way out, said in one line.
        raise InputError(
            f"cannot download the Kaggle dataset {KAGGLE_HANDLE}: {_why(error)}; {BY_HAND}."
        ) from error


def _why(error: Exception) -> str:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403) or type(error).__name__ == "UnauthenticatedError":
        return (
            f"Kaggle refused the request ({status or 'not signed in'}); set your Kaggle API "
            "credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME and KAGGLE_KEY, see "
            "docs/data.md)"
        )
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def _first_hop() -> tuple[str, int]:
    """Where the download's first connection goes: the HTTPS proxy when one is set (as
    requests reads it from the environment), else Kaggle's API host."""
    host, port = KAGGLE_API
    proxies = urllib.request.getproxies()
    proxy = proxies.get("https") or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    return host, port


def _unreachable(host: str, port: int, timeout: float = PROBE_SECONDS) -> str | None:
    """Why HOST:PORT cannot be reached, found within TIMEOUT seconds, or None.

    kagglehub's own timeouts do not cover the name lookup, which can stall for minutes on a
    machine without DNS; a thread bounds the whole probe.
    """
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"{host}:{port} cannot be reached ({error})")

    # A daemon thread: a lookup still stalled after the timeout must not keep lrstudy alive.
    thread = threading.Thread(target=probe, name="kaggle-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"{host}:{port} did not answer within {timeout:.0f} s"
    return outcome[0]


def _state_path(name: str) -> str:
    folder = default_cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"the lrstudy cache folder {folder!r} cannot be created ({error}); set "
            "XDG_CACHE_HOME to a writable folder."
        ) from error
    return os.path.join(folder, name)


def _read_record() -> dict[str, str] | None:
    try:
        with open(os.path.join(default_cache_dir(), RECORD_NAME), encoding="utf-8") as file:
            record = json.load(file)
    except (OSError, ValueError):
        return None
    keys = ("handle", "download", "root")
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in keys):
        return None
    return record if record["handle"] == KAGGLE_HANDLE else None


def _recorded_root() -> str | None:
    record = _read_record()
    return record["root"] if record and os.path.isdir(record["root"]) else None
