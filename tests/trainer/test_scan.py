"""Scanning a dataset folder: layouts, labels, patient ids, ignored files, folder errors, and
the Kaggle archive's nested duplicate and __MACOSX folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import WrittenDataset, write_dataset
from trainer import IgnoredFolder, InputError, patient_id, scan


def write_kaggle_download(folder: Path, **options) -> WrittenDataset:
    """What kagglehub leaves for the Kaggle archive: FOLDER/chest_xray/{train,val,test}, a full
    copy of those in chest_xray/chest_xray/, and chest_xray/__MACOSX/ holding an AppleDouble
    "._name" file (a few bytes, image extension, not an image) for every image of both copies.
    Returns what was written in the outer copy, paths relative to FOLDER/chest_xray."""
    outer = folder / "chest_xray"
    written = write_dataset(outer, **options)
    shutil.copytree(outer, outer / "chest_xray", ignore=shutil.ignore_patterns("chest_xray"))
    for copy in ("", "chest_xray/"):
        for path in written.labels:
            apple = (
                outer
                / "__MACOSX"
                / "chest_xray"
                / copy
                / Path(path).parent
                / f"._{Path(path).name}"
            )
            apple.parent.mkdir(parents=True, exist_ok=True)
            apple.write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X")
    return written


@pytest.mark.parametrize(
    ("stem", "patient"),
    [
        ("IM-0115-0001", "IM-0115"),
        ("IM-0523-0001-0002", "IM-0523"),
        ("NORMAL2-IM-1427-0001", "NORMAL2-IM-1427"),
        ("NORMAL2-IM-0983-0001-0002", "NORMAL2-IM-0983"),
        ("person1946_bacteria_4874", "person1946_bacteria"),
        ("person1180_virus_2010", "person1180_virus"),
        ("person447_virus_921_1", "person447_virus"),
        ("scan 2018-03-01", None),
        ("IM-0115", None),
        ("person12", None),
        ("xperson1_bacteria_2", None),
    ],
)
def test_patient_id_reads_the_three_naming_schemes(stem: str, patient: str | None) -> None:
    assert patient_id(stem) == patient == patient_id(stem, key="person-type")


def test_the_person_key_merges_bacterial_and_viral_cases_of_one_number() -> None:
    assert patient_id("person1946_bacteria_4874", key="person") == "person1946"
    assert patient_id("person1946_virus_3", key="person") == "person1946"
    assert patient_id("IM-0115-0001", key="person") == "IM-0115"
    with pytest.raises(ValueError, match="person-type"):
        patient_id("IM-0115-0001", key="number")


def test_scan_finds_every_image_with_label_patient_and_part(make_dataset) -> None:
    written = make_dataset(stray=True, unnamed=True, corrupt=True)
    result = scan(str(written.root))
    assert result.layout == "kaggle"
    assert result.missing_parts == ()
    found = {record.path: record for record in result.records}
    # The truncated JPEG is still an image file: decoding problems are found later.
    assert set(found) == set(written.labels) | set(written.corrupt)
    assert [record.path for record in result.records] == sorted(found)
    for path, label in written.labels.items():
        record = found[path]
        assert record.label == label
        assert record.patient == written.patients[path]
        assert record.folder_part == written.parts[path]
        assert record.size == (written.root / path).stat().st_size > 0
    assert sorted(result.ignored) == sorted(written.ignored)
    assert result.unnamed == 1


def test_scan_accepts_every_extension_case_and_png(make_dataset) -> None:
    written = make_dataset()
    suffixes = {path.rsplit(".", 1)[1] for path in written.labels}
    assert {"jpeg", "png", "jpg", "JPEG"} <= suffixes  # the fixture really mixes them
    assert len(scan(str(written.root)).records) == len(written.labels)


def test_flat_layout_is_one_pool(make_dataset) -> None:
    written = make_dataset(layout="flat", parts={"all": (9, 11)})
    result = scan(str(written.root))
    assert result.layout == "flat"
    assert len(result.records) == 20
    assert {record.folder_part for record in result.records} == {None}
    assert sum(record.label for record in result.records) == 11


def test_absent_part_folder_is_reported_not_fatal(make_dataset) -> None:
    written = make_dataset(parts={"train": (5, 5), "val": (2, 2)})
    result = scan(str(written.root))
    assert result.missing_parts == ("test",)
    assert {record.folder_part for record in result.records} == {"train", "val"}


def test_missing_class_folder_is_an_input_error(make_dataset) -> None:
    written = make_dataset()
    shutil.rmtree(written.root / "val" / "PNEUMONIA")
    with pytest.raises(InputError, match=r"'val/PNEUMONIA' is missing") as caught:
        scan(str(written.root))
    assert "\n" not in str(caught.value)


def test_missing_or_unrecognised_root_is_an_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        scan(str(tmp_path / "nowhere"))
    (tmp_path / "a" / "b" / "c" / "d" / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(InputError, match=r"holds neither .* up to 3 levels down") as caught:
        scan(str(tmp_path))  # the layout is 4 levels down: too deep to be looked for
    assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match=r"'train/PNEUMONIA' is missing in DATA .*/a/b/c/d'"):
        scan(str(tmp_path / "a"))  # found below DATA, then checked as DATA would be


def test_folder_without_images_is_an_input_error(tmp_path) -> None:
    for name in ("NORMAL", "PNEUMONIA"):
        (tmp_path / name).mkdir()
    (tmp_path / "NORMAL" / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match=r"no \.jpeg/\.jpg/\.png image"):
        scan(str(tmp_path))


@pytest.mark.parametrize(("folder", "renamed"), [("train", "Train"), ("val/NORMAL", "val/normal")])
def test_a_folder_named_but_for_its_case_is_an_input_error(
    make_dataset, folder: str, renamed: str
) -> None:
    written = make_dataset()
    (written.root / folder).rename(written.root / renamed)
    with pytest.raises(InputError, match=rf"folder '{renamed}' of DATA .* is not read") as caught:
        scan(str(written.root))
    assert f"named '{folder.split('/')[-1]}' (case matters)" in str(caught.value)


def test_a_second_part_folder_differing_in_case_is_an_input_error(make_dataset) -> None:
    written = make_dataset()
    shutil.copytree(written.root / "test", written.root / "Test")
    with pytest.raises(InputError, match=r"folder 'Test' of DATA .* is not read"):
        scan(str(written.root))


def test_a_folder_beside_the_class_folders_is_left_out_and_said(make_dataset) -> None:
    written = make_dataset()
    third = written.root / "train" / "COVID19"
    third.mkdir()
    for name in ("a.jpeg", "b.jpeg"):
        shutil.copy(written.root / sorted(written.labels)[0], third / name)
    result = scan(str(written.root))
    assert {record.path for record in result.records} == set(written.labels)
    assert result.ignored_folders == (IgnoredFolder("train/COVID19", "other", 2),)


def test_a_class_without_images_is_an_input_error(make_dataset) -> None:
    written = make_dataset(layout="flat", parts={"all": (0, 6)})
    with pytest.raises(InputError, match=r"holds no NORMAL image \(its NORMAL folders") as caught:
        scan(str(written.root))
    assert "\n" not in str(caught.value)


def test_a_folder_reached_twice_by_links_is_walked_once(make_dataset) -> None:
    written = make_dataset()
    normal = written.root / "train" / "NORMAL"
    (normal / "up").symlink_to(normal.parent, target_is_directory=True)  # into PNEUMONIA too
    (normal / "loop").symlink_to(normal, target_is_directory=True)
    result = scan(str(written.root))
    assert {record.path: record.label for record in result.records} == written.labels
    assert {"train/NORMAL/loop", "train/NORMAL/up/PNEUMONIA"} <= set(result.ignored)


@pytest.mark.parametrize("pointed_at", ["", "chest_xray"])
def test_kaggle_download_is_found_and_its_copies_left_out(tmp_path, pointed_at) -> None:
    written = write_kaggle_download(tmp_path / "download", stray=True)
    result = scan(str(tmp_path / "download" / pointed_at))
    assert result.root == str(tmp_path / "download" / "chest_xray")
    assert result.layout == "kaggle"
    # Each image once, from the outer copy: none from the duplicate, none from __MACOSX.
    assert [record.path for record in result.records] == sorted(written.labels)
    assert [record.label for record in result.records] == [
        written.labels[path] for path in sorted(written.labels)
    ]
    assert sorted(result.ignored) == sorted(written.ignored)
    images = len(written.labels)
    assert result.ignored_folders == (
        IgnoredFolder(path="__MACOSX", reason="macos", files=2 * images),
        IgnoredFolder(path="chest_xray", reason="duplicate", files=images + len(written.ignored)),
    )


def test_nested_duplicate_is_a_dataset_of_its_own(tmp_path) -> None:
    written = write_kaggle_download(tmp_path / "download")
    nested = tmp_path / "download" / "chest_xray" / "chest_xray"
    result = scan(str(nested))
    assert result.root == str(nested)
    assert [record.path for record in result.records] == sorted(written.labels)
    assert result.ignored_folders == ()  # the outer copy is above DATA: not looked at


def test_macosx_beside_and_inside_the_dataset_is_left_out(tmp_path) -> None:
    written = write_dataset(tmp_path / "unzipped" / "chest_xray", parts={"train": (3, 3)})
    beside = tmp_path / "unzipped" / "__MACOSX" / "chest_xray" / "train" / "NORMAL"
    beside.mkdir(parents=True)
    (beside / "._IM-0001-0001.jpeg").write_bytes(b"\0\5\26\7")
    # The copy in __MACOSX mirrors the layout: it must not count as a second dataset copy.
    (beside.parent / "PNEUMONIA").mkdir()
    inside = tmp_path / "unzipped" / "chest_xray" / "train" / "PNEUMONIA" / "__MACOSX"
    inside.mkdir()
    (inside / "._person1_bacteria_1.jpeg").write_bytes(b"\0\5\26\7")
    result = scan(str(tmp_path / "unzipped"))
    assert [record.path for record in result.records] == sorted(written.labels)
    assert result.ignored_folders == (
        IgnoredFolder(path="../__MACOSX", reason="macos", files=1),
        IgnoredFolder(path="train/PNEUMONIA/__MACOSX", reason="macos", files=1),
    )


def test_two_copies_at_one_depth_are_refused(tmp_path) -> None:
    for name in ("chest_xray", "chest_xray_cleaned"):
        write_dataset(tmp_path / name, parts={"train": (2, 2)})
    with pytest.raises(InputError, match=r"holds 2 dataset folders .*'chest_xray', "
                       r"'chest_xray_cleaned'.*pass the one") as caught:  # fmt: skip
        scan(str(tmp_path))
    assert "\n" not in str(caught.value)
    assert len(scan(str(tmp_path / "chest_xray_cleaned")).records) == 4
