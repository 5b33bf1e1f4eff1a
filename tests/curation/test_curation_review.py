"""Clinician review loop: stratified CSV export, grade import, override and agreement."""

import csv

import pytest
from curation_factories import bad_input_dataset

from megatron_infimed.curation import PrepareConfig, prepare, read_outcomes
from megatron_infimed.curation.review import agreement, import_review_grades, stratified_sample


def run(tmp_path, path, out, **kwargs):
    return prepare(PrepareConfig(format="llava", input=path, out=str(tmp_path / out), progress=False, **kwargs))


def test_stratified_sample_covers_every_outcome_and_is_seeded():
    lines = [{"key": f"k{i}", "reasons": [] if i < 90 else ["text_quality/garbled"], "scores": {"x": 1}}
             for i in range(100)]
    sample = stratified_sample(lines, 10, seed=0)
    assert len(sample) == 10 and sum(1 for ln in sample if ln["reasons"]) >= 1
    assert sample == stratified_sample(lines, 10, seed=0)


def test_export_writes_auto_scores_and_empty_grade_columns(tmp_path):
    path, _ = bad_input_dataset(tmp_path)
    run(tmp_path, path, "o", review_export=str(tmp_path / "review.csv"), review_samples=5)
    rows = list(csv.DictReader(open(tmp_path / "review.csv", encoding="utf-8")))
    assert len(rows) == 5
    assert {"sample_hash", "text", "auto_text_quality", "grade_text_quality", "comment"} <= set(rows[0])
    assert {r["stratum"] for r in rows} >= {"kept", "image_text_consistency/placeholder_mismatch"}
    assert all(r["grade_text_quality"] == "" for r in rows)


def test_human_grades_override_scores_and_agreement_is_reported(tmp_path):
    path, _ = bad_input_dataset(tmp_path)
    run(tmp_path, path, "first", review_export=str(tmp_path / "review.csv"), review_samples=20)
    rows = list(csv.DictReader(open(tmp_path / "review.csv", encoding="utf-8")))
    kept = next(r for r in rows if r["stratum"] == "kept")
    for row in rows:
        row["grade_text_quality"] = "1" if row is kept else "5"  # the clinician rejects one kept sample
    with open(tmp_path / "graded.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = run(tmp_path, path, "second", review_grades=str(tmp_path / "graded.csv"))
    outcome = next(ln for ln in read_outcomes(str(tmp_path / "second")) if ln["key"] == kept["key"])
    assert outcome["reasons"] == ["text_quality/human_grade"] and outcome["scores"]["text_quality"] == 0.0
    assert report["kept"] == 5
    assert report["review"]["agreement"]["text_quality"]["graded"] == len(rows)
    assert report["review"]["agreement"]["text_quality"]["agreement"] < 1.0


def test_invalid_grade_names_row_and_column(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("sample_hash,grade_text_quality\nabc,3\ndef,7\n")
    with pytest.raises(ValueError, match="row 3 column grade_text_quality: '7'"):
        import_review_grades(str(path))


def test_grades_map_one_to_five_onto_zero_to_one(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("sample_hash,grade_text_quality,grade_image_quality\nabc,5,1\nnone,,\n")
    assert import_review_grades(str(path)) == {"abc": {"text_quality": 1.0, "image_quality": 0.0}}


def test_agreement_computes_rate_kappa_and_mean_difference():
    result = agreement({"text_quality": [(1.0, 1.0), (0.0, 0.0), (1.0, 0.0), (0.0, 0.0)]}, {"text_quality": 0.5})
    assert result["text_quality"] == {"graded": 4, "agreement": 0.75, "kappa": 0.5, "mean_abs_diff": 0.25}
