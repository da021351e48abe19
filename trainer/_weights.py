"""Inception V3's ImageNet weights, downloaded once per machine into Keras's own cache.

Keras downloads straight into its final path, so eight workers starting together race on one
file and burn their retries on partial downloads. Here one process downloads under a file
lock, to a temporary file, checks Keras's published hash and renames the file into place;
Keras then finds it complete and verified, and downloads nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock

from trainer._errors import InputError

_logger = logging.getLogger(__name__)

IMAGENET_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
# The MD5 that keras.applications.InceptionV3 checks the no-top file against.
IMAGENET_MD5 = "bcbd6486424b2319ff4ef7d526e38f63"
IMAGENET_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
ORIGIN_ENV = "LRSTUDY_WEIGHTS_ORIGIN"
"""Another folder URL to download from (a mirror, or a local server in tests)."""
_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


def keras_models_dir() -> Path:
    """Where Keras keeps downloaded weights: ``$KERAS_HOME/models``, else ``~/.keras/models``
    (``/tmp/.keras/models`` where the home folder is not writable, as Keras does)."""
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    if not os.access(home if home.exists() else home.parent, os.W_OK):
        home = Path("/tmp/.keras")
    return home / "models"


def imagenet_weights_path() -> Path | None:
    """The verified ImageNet file in Keras's cache, or None when it is not there (yet)."""
    path = keras_models_dir() / IMAGENET_FILE
    return path if path.is_file() and _md5(path) == IMAGENET_MD5 else None


def fetch_imagenet_weights(*, origin: str | None = None, md5: str = IMAGENET_MD5) -> Path:
    """Put Inception V3's no-top ImageNet weights into Keras's cache, unless they are there.

    Safe from many processes at once: the first downloads, the others wait for the lock and
    find the file.

    Args:
        origin: The folder URL the file is downloaded from. Defaults to `None`:
            ``$LRSTUDY_WEIGHTS_ORIGIN``, else the URL keras.applications downloads from.
        md5: The hash the file must have. Defaults to Keras's published one.

    Raises:
        InputError: the download failed or gave another file; the message says what to do.
    """
    folder = keras_models_dir()
    target = folder / IMAGENET_FILE
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f".{IMAGENET_FILE}.lock")):
        if target.is_file() and _md5(target) == md5:
            return target
        url = (origin or os.environ.get(ORIGIN_ENV) or IMAGENET_ORIGIN).rstrip("/") + "/"
        url += IMAGENET_FILE
        partial = folder / f".{IMAGENET_FILE}.{os.getpid()}.part"
        _logger.info("downloading the ImageNet weights of Inception V3 from %s", url)
        try:
            _download(url, partial)
            got = _md5(partial)
            if got != md5:
                raise InputError(
                    f'weights "imagenet": {url} gave a file with MD5 {got}, not Keras\'s '
                    f"{md5} (a proxy's error page?); check the download, or give the path of "
                    "a weights file as weights"
                )
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def _download(url: str, path: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(path, "wb") as out:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise InputError(
            f'weights "imagenet": cannot download {IMAGENET_FILE} from {url} ({reason}); '
            'use weights "none", or copy that file here and give its path as weights'
        ) from error


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
