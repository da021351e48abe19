"""Find the images of a dataset folder, their labels and patients, without decoding them."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from trainer._errors import InputError
from trainer._patients import CLASS_NAMES, patient_id

_logger = logging.getLogger(__name__)

PART_NAMES: tuple[str, str, str] = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png"})
MACOS_FOLDER = "__MACOSX"  # AppleDouble "._name.jpeg" files a Mac adds to a zip: not images
# How far below DATA to look for the dataset: the Kaggle download holds chest_xray/, which
# holds a second, nested chest_xray/ copy.
SEARCH_DEPTH = 3


@dataclass(frozen=True)
class ImageRecord:
    """One image file: what the split and the cache need to know before decoding it."""

    path: str  # relative to the data root, with "/" separators
    label: int  # index into CLASS_NAMES
    patient: str  # from the name; the path itself for a name outside the known schemes
    folder_part: str | None = None  # "train" | "val" | "test" in the Kaggle layout, else None
    size: int = 0
    mtime_ns: int = 0

    @property
    def named(self) -> bool:
        """Whether the patient comes from one of the dataset's naming schemes."""
        return self.patient != self.path


@dataclass(frozen=True)
class IgnoredFolder:
    """A folder left out whole, so that no image is counted twice, read from Mac metadata or
    taken for a class it is not."""

    path: str  # relative to the data root, "/" separators ("../__MACOSX" when beside it)
    reason: str  # "duplicate": another copy of the layout; "macos": a __MACOSX folder; "other":
    # a folder beside the class folders
    files: int  # files under it, none of them scanned


@dataclass(frozen=True)
class ScanResult:
    """Every image under a data root, sorted by path, plus what was left aside."""

    root: str  # the folder holding the layout: DATA itself or the one copy found below it
    layout: str  # "kaggle": ROOT/{train,val,test}/CLASS; "flat": ROOT/CLASS
    records: tuple[ImageRecord, ...]
    ignored: tuple[str, ...]  # hidden or non-image files inside the class folders
    missing_parts: tuple[str, ...]  # Kaggle part folders that are absent
    ignored_folders: tuple[IgnoredFolder, ...] = ()  # duplicate copies and __MACOSX folders

    @property
    def unnamed(self) -> int:
        """How many images follow none of the naming schemes (each is its own patient)."""
        return sum(not record.named for record in self.records)


def scan(root: str) -> ScanResult:
    """Walk the dataset at ROOT, in the Kaggle layout or as a flat pool of the two class folders.

    ROOT may also be a folder above the dataset, such as the Kaggle download, whose archive
    unpacks to ``chest_xray/`` holding a nested duplicate ``chest_xray/chest_xray/`` and a
    ``__MACOSX/`` folder. The shallowest folder holding a layout is the dataset; the copies
    below it and every ``__MACOSX`` folder are reported in ``ignored_folders``, never scanned.

    Raises:
        InputError: ROOT is missing, holds no layout within ``SEARCH_DEPTH`` levels, holds two
            copies at the same depth, lacks a class folder, or has no image of a class.
    """
    given = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(given):
        raise InputError(
            f"DATA must be a folder of chest X-rays; {given!r} does not exist or is not a folder. "
            "Pass the folder that holds train/val/test or NORMAL/PNEUMONIA."
        )
    root, macos = _find_root(given)
    layout = _layout(root)
    assert layout is not None  # _find_root returns a folder that holds a layout
    folders: list[tuple[str | None, str]]
    if layout == "kaggle":
        present = [part for part in PART_NAMES if os.path.isdir(os.path.join(root, part))]
        missing = tuple(part for part in PART_NAMES if part not in present)
        folders = [(part, os.path.join(root, part)) for part in present]
    else:
        missing, folders = (), [(None, root)]
    duplicates, inner_macos = _extra_copies(root)
    records: list[ImageRecord] = []
    ignored: list[str] = []
    _check_case(root, root, PART_NAMES if layout == "kaggle" else CLASS_NAMES)
    for _, folder in folders:
        _check_case(root, folder, CLASS_NAMES)
        for class_name in CLASS_NAMES:
            class_dir = os.path.join(folder, class_name)
            if not os.path.isdir(class_dir):
                raise InputError(
                    f"class folder {os.path.relpath(class_dir, root)!r} is missing in DATA "
                    f"{root!r}; every part needs both NORMAL and PNEUMONIA folders."
                )
    walked = {_identity(os.path.join(f, name)) for _, f in folders for name in CLASS_NAMES}
    for part, folder in folders:
        for label, class_name in enumerate(CLASS_NAMES):
            class_dir = os.path.join(folder, class_name)
            _walk(root, class_dir, label, part, records, ignored, inner_macos, walked)
    if not records:
        raise InputError(
            f"DATA {root!r} holds no .jpeg/.jpg/.png image in its class folders; "
            "point DATA at a copy of the chest X-ray dataset."
        )
    for label, class_name in enumerate(CLASS_NAMES):
        if not any(record.label == label for record in records):
            # A network shown one class learns nothing and its ROC AUC is undefined.
            raise InputError(
                f"DATA {root!r} holds no {class_name} image (its {class_name} folders are "
                "empty); copy that class's images in, since a study needs both classes."
            )
    records.sort(key=lambda record: record.path)
    ignored.sort()
    others = _other_folders(folders, duplicates)
    ignored_folders = sorted(
        [_ignored(root, path, "duplicate") for path in duplicates]
        + [_ignored(root, path, "macos") for path in macos + inner_macos]
        + [_ignored(root, path, "other") for path in others],
        key=lambda folder: folder.path,
    )
    _logger.debug(
        "scanned %s: %d images, %d ignored files, ignored folders %s",
        root,
        len(records),
        len(ignored),
        [folder.path for folder in ignored_folders] or "none",
    )
    return ScanResult(
        root, layout, tuple(records), tuple(ignored), missing, tuple(ignored_folders)
    )


def _layout(folder: str) -> str | None:
    """The layout FOLDER holds, even incompletely ("kaggle" or "flat"), or None."""
    if any(os.path.isdir(os.path.join(folder, part)) for part in PART_NAMES):
        return "kaggle"
    if any(os.path.isdir(os.path.join(folder, name)) for name in CLASS_NAMES):
        return "flat"
    return None


def _check_case(root: str, folder: str, names: tuple[str, ...]) -> None:
    """Refuse a folder named like one of NAMES but for its case (``Train``, ``normal``): on a
    case-sensitive file system it would be left out without a word (beside ``train``, too).
    Where the file system ignores case, it is that folder and is read."""
    wanted = {name.lower(): name for name in names}
    present = {os.path.basename(found) for found in _subfolders(folder)}
    for name in sorted(present):
        expected = wanted.get(name.lower())
        if expected is None or name == expected:
            continue
        if expected in present or not os.path.isdir(os.path.join(folder, expected)):
            found = os.path.join(folder, name)
            raise InputError(
                f"folder {os.path.relpath(found, root)!r} of DATA {root!r} is not read: the "
                f"dataset's folder is named {expected!r} (case matters); rename it, or move its "
                f"images into {expected!r}."
            )


def _subfolders(folder: str) -> list[str]:
    """Visible subfolders, sorted, so that every choice below is the same on every machine."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:  # unreadable: nothing to find there, and DATA itself was readable
        return []
    return [
        os.path.join(folder, name)
        for name in names
        if not name.startswith(".") and os.path.isdir(os.path.join(folder, name))
    ]


def _find_root(given: str) -> tuple[str, list[str]]:
    """The shallowest folder at or below GIVEN that holds a layout, and the __MACOSX folders
    passed on the way down."""
    level = [given]
    macos: list[str] = []
    for _ in range(SEARCH_DEPTH + 1):
        found = [folder for folder in level if _layout(folder)]
        if len(found) > 1:
            names = ", ".join(repr(os.path.relpath(path, given)) for path in found)
            raise InputError(
                f"DATA {given!r} holds {len(found)} dataset folders at the same depth ({names}); "
                "pass the one to use as DATA."
            )
        if found:
            return found[0], macos
        below = [path for folder in level for path in _subfolders(folder)]
        macos += [path for path in below if os.path.basename(path) == MACOS_FOLDER]
        level = [path for path in below if os.path.basename(path) != MACOS_FOLDER]
    raise InputError(
        f"DATA {given!r} holds neither train/val/test nor NORMAL/PNEUMONIA folders, nor a "
        f"folder with them up to {SEARCH_DEPTH} levels down; pass the folder of the Kaggle "
        "chest_xray layout."
    )


def _extra_copies(root: str) -> tuple[list[str], list[str]]:
    """Copies of the layout below ROOT outside the scanned folders (the Kaggle archive's
    nested duplicate), and the __MACOSX folders there."""
    skip = set(PART_NAMES) | set(CLASS_NAMES)
    level = [path for path in _subfolders(root) if os.path.basename(path) not in skip]
    duplicates: list[str] = []
    macos: list[str] = []
    for _ in range(SEARCH_DEPTH):
        below = []
        for folder in level:
            if os.path.basename(folder) == MACOS_FOLDER:
                macos.append(folder)
            elif _layout(folder):
                duplicates.append(folder)  # its own nested copies are inside it: not searched
            else:
                below += _subfolders(folder)
        level = below
    return duplicates, macos


def _other_folders(folders: list[tuple[str | None, str]], duplicates: list[str]) -> list[str]:
    """Folders beside the class folders (``train/COVID19``), which hold no class the study
    knows: left out, and said, since a third class's images would otherwise vanish unseen."""
    return [
        path
        for _, folder in folders
        for path in _subfolders(folder)
        if os.path.basename(path) not in (*CLASS_NAMES, MACOS_FOLDER)
        and not any(copy == path or copy.startswith(path + os.sep) for copy in duplicates)
    ]


def _walk(
    root: str,
    folder: str,
    label: int,
    part: str | None,
    records: list[ImageRecord],
    ignored: list[str],
    macos: list[str],
    walked: set[tuple[int, int]],
) -> None:
    """Add the images under FOLDER. ``walked`` holds the class folders and every folder
    walked so far: a folder reached again (a link back up, or two links to one place) is
    listed as ignored, so no image counts twice or under the other class, and a link loop
    cannot recurse forever."""
    for entry in os.scandir(folder):
        relative = os.path.relpath(entry.path, root).replace(os.sep, "/")
        if entry.name.startswith("."):
            ignored.append(relative)
        elif entry.is_dir():
            if entry.name == MACOS_FOLDER:
                macos.append(entry.path)
            elif (found := _identity(entry.path)) in walked:
                ignored.append(relative)
            else:
                walked.add(found)
                _walk(root, entry.path, label, part, records, ignored, macos, walked)
        else:
            stem, extension = os.path.splitext(entry.name)
            if extension.lower() not in IMAGE_EXTENSIONS or not entry.is_file():
                ignored.append(relative)
                continue
            stat = entry.stat()
            records.append(
                ImageRecord(
                    path=relative,
                    label=label,
                    patient=patient_id(stem) or relative,
                    folder_part=part,
                    size=stat.st_size,
                    mtime_ns=stat.st_mtime_ns,
                )
            )


def _identity(folder: str) -> tuple[int, int]:
    """The folder itself, whatever links lead to it."""
    found = os.stat(folder)
    return found.st_dev, found.st_ino


def _ignored(root: str, path: str, reason: str) -> IgnoredFolder:
    files = sum(len(names) for _, _, names in os.walk(path))
    relative = os.path.relpath(path, root).replace(os.sep, "/")
    return IgnoredFolder(path=relative, reason=reason, files=files)
