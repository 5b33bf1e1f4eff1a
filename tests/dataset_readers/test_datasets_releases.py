"""The SLAKE, PathVQA, PMC-VQA and OmniMedVQA readers on small files written by the tests."""

import json

import pytest
from release_files import write_csv

from megatron_infimed.datasets import omnimedvqa, pathvqa, pmc_vqa, slake
from megatron_infimed.datasets.files import ReleaseFileError


def write_json(path, entries):
    path.write_text(json.dumps(entries, ensure_ascii=False))
    return path


# --- slake --------------------------------------------------------------------------------------


def slake_entry(qid, lang="en", **fields):
    return {"qid": qid, "img_name": "xmlab1/source.jpg", "question": "Which organ?", "answer": "Lung",
            "q_lang": lang, "answer_type": "OPEN", "modality": "CT", "location": "Chest_lung",
            "content_type": "Organ", "img_id": 1, **fields}


def test_slake_keeps_english_by_default_and_counts_the_rest_as_excluded(tmp_path):
    path = write_json(tmp_path / "test.json", [slake_entry(1), slake_entry(2, "zh"), slake_entry(3)])
    english = slake.read(path)
    assert [row.id for row in english.rows] == ["1", "3"] and english.excluded == 1
    assert [row.id for row in slake.read(path, language="zh").rows] == ["2"]
    assert len(slake.read(path, language="all").rows) == 3


def test_slake_split_comes_from_the_file_name(tmp_path):
    for name, split in [("train.json", "train"), ("validate.json", "validation"), ("test.json", "test"),
                        ("mine.json", None)]:
        (row,) = slake.read(write_json(tmp_path / name, [slake_entry(1)])).rows
        assert row.split == split, name


def test_slake_row_carries_the_release_labels_and_images_are_in_imgs(tmp_path):
    (tmp_path / "imgs").mkdir()
    (row,) = slake.read(write_json(tmp_path / "test.json", [slake_entry(1, answer_type="closed ")])).rows
    assert (row.answer_type, row.modality, row.organ, row.content_type, row.img_id) == ("CLOSED", "CT", "chest_lung",
                                                                                         "Organ", 1)
    assert row.image == tmp_path / "imgs" / "xmlab1" / "source.jpg"


def test_slake_answer_type_is_optional_but_must_be_closed_or_open(tmp_path):
    path = write_json(tmp_path / "test.json", [slake_entry(1, answer_type=None), slake_entry(9, answer_type="MAYBE")])
    read = slake.read(path)
    assert read.rows[0].answer_type is None
    (bad,) = read.malformed
    assert bad.kind == "bad_value"
    assert bad.detail.endswith("record 1 (qid 9): answer_type 'MAYBE' is not CLOSED or OPEN")


def test_slake_entry_without_q_lang_is_reported_even_when_every_language_is_kept(tmp_path):
    path = write_json(tmp_path / "test.json", [slake_entry(1, lang=None)])
    (bad,) = slake.read(path, language="all").malformed
    assert bad.kind == "missing_field" and bad.detail.endswith("(qid 1): missing field 'q_lang'")


# --- pathvqa ------------------------------------------------------------------------------------


def test_pathvqa_id_is_qid_when_present_else_the_index(tmp_path):
    path = write_json(tmp_path / "pathvqa.json", [
        {"image": "a.png", "question": "q?", "answer": "no"},
        {"image": "a.png", "question": "q?", "answer": "yes", "qid": "p7", "answer_type": "closed"},
        {"image": "a.png", "question": "q?", "answer": "yes", "qid": None},
    ])
    rows = pathvqa.read(path).rows
    assert [row.id for row in rows] == ["0", "p7", "2"]
    assert [row.answer_type for row in rows] == [None, "CLOSED", None]


def test_pathvqa_image_named_without_suffix_resolves_and_names_the_split(tmp_path):
    (tmp_path / "train_0001.jpg").write_bytes(b"x")
    path = write_json(tmp_path / "pathvqa.json", [
        {"image": "train_0001", "question": "Is this a carcinoma?", "answer": "yes"},
        {"image": "test_0002.png", "question": "q?", "answer": "no"},
        {"image": "slide.png", "question": "q?", "answer": "no"},
    ])
    rows = pathvqa.read(path).rows
    assert rows[0].image == tmp_path / "train_0001.jpg"
    assert [row.split for row in rows] == ["train", "test", None]


def test_pathvqa_entry_that_is_not_an_object_is_a_bad_record(tmp_path):
    path = write_json(tmp_path / "pathvqa.json", [["a.png", "q?", "yes"]])
    (bad,) = pathvqa.read(path).malformed
    assert (bad.id, bad.kind) == (None, "bad_record")
    assert bad.detail.endswith("record 0: expected a JSON object, got list")


# --- pmc_vqa ------------------------------------------------------------------------------------

PMC_HEADER = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D"]


def test_pmc_vqa_drops_choice_prefixes_and_turns_the_gold_text_into_its_letter(tmp_path):
    (tmp_path / "images").mkdir()
    path = write_csv(tmp_path / "test_2.csv", PMC_HEADER, [
        ["fig.jpg", "Which plane?", "Sagittal", "A:Axial", "B:Sagittal", "C:Coronal", "D:Oblique"],
        ["fig.jpg", "Which organ?", "a", " A: Liver", " B: Kidney", "", ""],
    ])
    first, second = pmc_vqa.read(path).rows
    assert (first.id, first.answer, dict(first.options)) == ("0", "B", {"A": "Axial", "B": "Sagittal", "C": "Coronal",
                                                                        "D": "Oblique"})
    assert (second.id, second.answer, dict(second.options)) == ("1", "A", {"A": "Liver", "B": "Kidney"})
    assert (first.split, first.image) == ("test", tmp_path / "images" / "fig.jpg")


def test_pmc_vqa_answer_label_wins_over_answer(tmp_path):
    path = write_csv(tmp_path / "test.csv", PMC_HEADER + ["Answer_label"], [
        ["fig.jpg", "q?", "Coronal plane", "A:Axial", "B:Sagittal", "C:Coronal", "D:Oblique", "C"],
    ])
    assert pmc_vqa.read(path).rows[0].answer == "C"


def test_pmc_vqa_missing_column_fails_the_whole_file(tmp_path):
    path = write_csv(tmp_path / "test.csv", ["Figure_path", "Question", "Answer", "Choice A"], [])
    with pytest.raises(ReleaseFileError, match=r"test.csv: missing CSV column\(s\) \['Choice B'\]"):
        pmc_vqa.read(path)


def test_pmc_vqa_bad_rows_are_named_by_line_and_row(tmp_path):
    path = write_csv(tmp_path / "test.csv", PMC_HEADER, [
        ["fig.jpg", "q?", "Axial", "A:Axial", "B:Sagittal", "", ""],
        ["fig.jpg", "q?", "Spleen", "A:Liver", "B:Kidney", "", ""],
        ["fig.jpg", "q?", "A", "A:Liver", "B:Kidney", "", "", "surplus"],
    ])
    read = pmc_vqa.read(path)
    assert [row.id for row in read.rows] == ["0"]
    gold, surplus = read.malformed
    assert (gold.id, gold.kind) == ("1", "bad_value")
    assert gold.detail.endswith("line 3 (row 1): gold answer 'Spleen' matches 0 of the options "
                                "{'A': 'Liver', 'B': 'Kidney'}")
    assert surplus.kind == "bad_record" and surplus.detail.endswith("line 4 (row 2): more cells than the 7 columns")


# --- omnimedvqa ---------------------------------------------------------------------------------


def test_omnimedvqa_gold_text_becomes_its_letter_and_every_row_is_test(tmp_path):
    path = write_json(tmp_path / "qa.json", [
        {"question_id": "ct_1", "question": "What is shown?", "gt_answer": "Pneumonia", "option_A": "Normal",
         "option_B": "Pneumonia", "option_C": "Tumour", "image_path": "Images/ct/1.png",
         "question_type": "Disease Diagnosis", "modality_type": "CT(Computed Tomography)"},
        {"question": "Modality?", "gt_answer": "CT", "option_A": "CT", "option_B": "MRI",
         "image_path": "Images/ct/1.png"},
    ])
    first, second = omnimedvqa.read(path, image_root=tmp_path / "OmniMedVQA").rows
    assert (first.id, first.answer, first.split, first.question_type, first.modality) == (
        "ct_1", "B", "test", "Disease Diagnosis", "CT(Computed Tomography)")
    assert (second.id, second.answer, list(second.options)) == ("1", "A", ["A", "B"])
    assert first.image == tmp_path / "OmniMedVQA" / "Images" / "ct" / "1.png"


def test_omnimedvqa_needs_two_options(tmp_path):
    path = write_json(tmp_path / "qa.json", [{"question_id": 3, "question": "q?", "gt_answer": "CT", "option_A": "CT",
                                              "image_path": "x.png"}])
    (bad,) = omnimedvqa.read(path).malformed
    assert bad.detail.endswith("(question_id 3): expected at least option_A and option_B, got ['A']")
