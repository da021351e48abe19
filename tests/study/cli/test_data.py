"""``lrstudy data check`` and ``lrstudy data prepare`` as a user runs them: output, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from tests.trainer.test_scan import write_kaggle_download


def lrstudy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study", *args], capture_output=True, text=True, timeout=300
    )


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lrstudy: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def test_check_prints_a_table_2_style_table(make_dataset) -> None:
    written = make_dataset(stray=True, unnamed=True)
    result = lrstudy("data", "check", str(written.root), "--split", "kaggle")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line}
    counts = Counter((written.parts[path], label) for path, label in written.labels.items())
    for part in ("train", "val", "test"):
        assert rows[part][:3] == [str(counts[part, 0]), str(counts[part, 1]),
                                  str(counts[part, 0] + counts[part, 1])]  # fmt: skip
    assert rows["total"] == ["25", "32", "57"]  # 12+6+6 NORMAL and the unnamed one; 16+8+8
    assert "ignored files (hidden or not .jpeg/.jpg/.png): 3" in result.stdout
    assert "patients in two parts: 0" in result.stdout
    assert "names outside the dataset's schemes: 1" in result.stdout


def test_check_says_plainly_that_the_leakage_control_leaks(make_dataset) -> None:
    root = str(make_dataset(layout="flat", parts={"train": (40, 60)}).root)
    table = lrstudy("data", "check", root, "--split", "paper-by-image", "--patient-key", "person")
    assert table.returncode == 0, table.stderr
    assert "patient key person" in table.stdout
    assert "LEAKS: split 'paper-by-image' ignores patients on purpose" in table.stdout
    report = json.loads(
        lrstudy("data", "check", root, "--split", "paper-by-image", "--json").stdout
    )
    assert report["leak"].startswith("LEAKS: ") and report["patient_key"] == "person-type"
    assert json.loads(lrstudy("data", "check", root, "--json").stdout)["leak"] is None


def test_check_json_has_the_documented_keys(make_dataset) -> None:
    written = make_dataset(stray=True)
    result = lrstudy("data", "check", str(written.root), "--split", "ratios", "--json",
                     "--ratios", "0.5,0.25,0.25", "--split-seed", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"parts", "shared_patients", "ignored", "bad"} <= set(report)
    assert set(report["parts"]) == {"train", "val", "test"}
    assert report["shared_patients"] == 0 and report["bad"] == []
    assert report["ignored"] == {"files": 3, "folders": []}
    parts = report["parts"]
    assert sum(parts[p]["NORMAL"] for p in parts) == 24
    assert sum(parts[p]["PNEUMONIA"] for p in parts) == 32
    assert sum(parts[p]["patients"] for p in parts) == len(set(written.patients.values()))
    assert parts["train"]["PNEUMONIA"] == 16  # half of 32, stratified by class


def test_check_refuses_an_undecodable_image_unless_skip_bad(make_dataset) -> None:
    written = make_dataset(corrupt=True)
    refused = lrstudy("data", "check", str(written.root), "--json")
    error = _one_error_line(refused)
    assert written.corrupt[0] in error and "--skip-bad" in error
    assert json.loads(refused.stdout)["bad"] == [written.corrupt[0]]
    skipped = lrstudy("data", "check", str(written.root), "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert (
        f"undecodable images: 1, left out (--skip-bad)\n  {written.corrupt[0]}" in skipped.stdout
    )


def test_check_limit_per_class(make_dataset) -> None:
    written = make_dataset()
    result = lrstudy("data", "check", str(written.root), "--json", "--split", "kaggle",
                     "--limit-per-class", "7")  # fmt: skip
    parts = json.loads(result.stdout)["parts"]
    assert [(parts[p]["NORMAL"], parts[p]["PNEUMONIA"]) for p in ("train", "val", "test")] == [
        (7, 7), (6, 7), (6, 7)
    ]  # fmt: skip


def test_check_reports_an_absent_part_folder(make_dataset) -> None:
    written = make_dataset(parts={"train": (6, 6), "val": (3, 3)})
    kaggle = lrstudy("data", "check", str(written.root), "--split", "kaggle")
    assert kaggle.returncode == 0, kaggle.stderr
    assert "folder test/ is absent: the test part of --split kaggle is empty" in kaggle.stdout
    pooled = json.loads(lrstudy("data", "check", str(written.root), "--json").stdout)
    assert pooled["parts"]["test"]["NORMAL"] > 0  # paper pools every folder


def test_check_refuses_a_part_left_with_one_class(make_dataset) -> None:
    written = make_dataset(parts={"train": (6, 6), "val": (0, 3), "test": (3, 3)})
    error = _one_error_line(lrstudy("data", "check", str(written.root), "--split", "kaggle"))
    assert "would leave no val NORMAL image" in error and "use --split paper" in error
    pooled = lrstudy("data", "check", str(written.root))
    assert pooled.returncode == 0, pooled.stderr


def test_check_reports_the_kaggle_archive_copies_it_left_out(tmp_path) -> None:
    written = write_kaggle_download(tmp_path / "download", stray=True)
    images = len(written.labels)
    human = lrstudy("data", "check", str(tmp_path / "download"), "--split", "kaggle")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'download' / 'chest_xray'} (kaggle layout)")
    total = next(line for line in lines if line.startswith("total")).split()[1:]
    assert total == ["24", "32", str(images)]  # each image once: 12+6+6 and 16+8+8
    assert (
        f"ignored folder __MACOSX/: macOS archive metadata ({2 * images} files, not scanned)"
        in lines
    )
    duplicate = images + len(written.ignored)
    assert (
        f"ignored folder chest_xray/: another copy of the dataset ({duplicate} files, "
        "not scanned)" in lines
    )
    report = json.loads(lrstudy("data", "check", str(tmp_path / "download"), "--json").stdout)
    assert report["root"] == str(tmp_path / "download" / "chest_xray")
    assert sum(p["NORMAL"] + p["PNEUMONIA"] for p in report["parts"].values()) == images
    assert report["ignored"] == {
        "files": 3,
        "folders": [
            {"path": "__MACOSX", "reason": "macos", "files": 2 * images},
            {"path": "chest_xray", "reason": "duplicate", "files": duplicate},
        ],
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--split", "official"],
            '--split must be one of "kaggle", "paper", "ratios", "paper-by-image"; '
            "got 'official'",
        ),
        (["--split", "ratios", "--ratios", "0.7,0.3"], "--ratios must be three"),
        (["--ratios", "0.5,0.5,0.5"], "--ratios must be 3 numbers that sum to 1"),
        (["--limit-per-class", "0"], "--limit-per-class must be an integer >= 1"),
        (["--split-seed", "-1"], "--split-seed must be an integer >= 0"),
    ],
)
def test_bad_options_end_in_one_line(dataset_dir, args, message) -> None:
    assert message in _one_error_line(lrstudy("data", "check", str(dataset_dir), *args))


def test_bad_folders_end_in_one_line(make_dataset, tmp_path) -> None:
    missing = _one_error_line(lrstudy("data", "check", str(tmp_path / "nowhere")))
    assert "does not exist" in missing
    written = make_dataset()
    shutil.rmtree(written.root / "train" / "NORMAL")
    assert "'train/NORMAL' is missing" in _one_error_line(
        lrstudy("data", "check", str(written.root))
    )
    flat = make_dataset(layout="flat", parts={"all": (4, 4)})
    error = _one_error_line(lrstudy("data", "check", str(flat.root), "--split", "kaggle"))
    assert 'use split "paper" or "ratios"' in error


def test_prepare_builds_then_reuses(dataset_dir, tmp_path) -> None:
    cache = str(tmp_path / "cache")
    first = lrstudy(
        "data", "prepare", str(dataset_dir), "--image-size", "24", "--cache-dir", cache
    )
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith(f"cache: {cache}/pool-24px-") and lines[0].endswith(".npy")
    assert lines[1].startswith("built: 56 images at 24 px in ") and "images/s" in lines[1]
    assert "image cache" in first.stderr  # progress goes to the log
    prepare = ("data", "prepare", str(dataset_dir), "--cache-dir", cache)
    second = lrstudy(*prepare, "--image-size", "24", "--split", "ratios")
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[0] == lines[0]
    assert second.stdout.splitlines()[1].startswith("reused: 56 images at 24 px")
    assert "image_size must be an integer of at least 8 pixels; got 4" in _one_error_line(
        lrstudy(*prepare, "--image-size", "4")
    )


def test_prepare_refuses_an_undecodable_image(make_dataset, tmp_path) -> None:
    written = make_dataset(corrupt=True)
    cache = str(tmp_path / "cache")
    args = ("data", "prepare", str(written.root), "--image-size", "16", "--cache-dir", cache)
    assert written.corrupt[0] in _one_error_line(lrstudy(*args))
    assert lrstudy(*args, "--skip-bad").returncode == 0


def test_real_images_paper_split(shared_data) -> None:
    result = lrstudy("data", "check", str(shared_data), "--split", "paper", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["shared_patients"] == 0 and report["bad"] == []
    parts = report["parts"]
    assert sum(parts[p]["NORMAL"] + parts[p]["PNEUMONIA"] for p in parts) == 5232
