"""The data report: the patient key it counts by, and the plain warning of a leaking split."""

from __future__ import annotations

import json

from trainer import DataConfig, check_dataset


def test_a_patient_disjoint_split_reports_no_leak_and_its_key(make_dataset) -> None:
    root = make_dataset(layout="flat", parts={"train": (40, 60)}).root
    report = check_dataset(DataConfig(str(root), patient_key="person"))
    assert report.shared_patients == () and report.leak is None
    as_json = json.loads(json.dumps(report.to_json()))
    assert as_json["leak"] is None and as_json["patient_key"] == "person"


def test_the_leakage_control_says_plainly_that_it_leaks(make_dataset) -> None:
    root = make_dataset(layout="flat", parts={"train": (40, 60)}).root
    report = check_dataset(DataConfig(str(root), split="paper-by-image"))
    assert report.shared_patients  # patients with several images land in two parts
    assert report.leak is not None and report.leak.startswith("LEAKS: ")
    assert "inflated" in report.leak and "\n" not in report.leak
    assert report.to_json()["leak"] == report.leak
    paper = check_dataset(DataConfig(str(root), split="paper"))
    assert [sum(p.images) for p in paper.parts.values()] == [
        sum(p.images) for p in report.parts.values()
    ]
