"""The VQA-RAD reader: the community split table, the release's quirks, malformed entries reported."""

import json

import pytest

from megatron_infimed.datasets import vqa_rad
from megatron_infimed.datasets.entries import Malformed

RELEASE = "VQA_RAD_Dataset_Public.json"


def entry(qid, phrase_type, **fields):
    return {"qid": qid, "phrase_type": phrase_type, "image_name": "synpic1.jpg", "image_organ": "CHEST",
            "question": f"question {qid}?", "answer": "No", "answer_type": "CLOSED", "question_type": "PRES",
            **fields}


def write(tmp_path, entries):
    path = tmp_path / "VQA_RAD.json"
    path.write_text(json.dumps(entries))
    return path


# --- the real release ---------------------------------------------------------------------------


@pytest.mark.parametrize("split, n", [("test", 451), ("train", 1797), ("all", 2248)])
def test_real_release_splits_into_the_community_sizes_with_nothing_malformed(vqa_rad_dir, split, n):
    read = vqa_rad.read(vqa_rad_dir / RELEASE, split=split)
    assert len(read.rows) == n and read.excluded == 2248 - n and read.malformed == []
    assert {row.split for row in read.rows} == ({"train", "test"} if split == "all" else {split})


def test_real_release_rows_have_unique_string_ids_clean_labels_and_images_on_disk(vqa_rad_dir):
    rows = vqa_rad.read(vqa_rad_dir / RELEASE, split="all").rows
    ids = [row.id for row in rows]
    assert len(set(ids)) == 2248 and "0" in ids and all(isinstance(i, str) for i in ids)
    assert {row.answer_type for row in rows} == {"CLOSED", "OPEN"}  # the two "CLOSED " are stripped
    assert {row.organ for row in rows} == {"head", "chest", "abdomen"}
    assert all(row.image.parent.name == "images" and row.image.is_file() for row in rows)


# --- small files --------------------------------------------------------------------------------


def test_phrase_type_decides_the_split(tmp_path):
    path = write(tmp_path, [entry("0", "freeform"), entry(1, "test_freeform"), entry(2, "test_para"), entry(3, "para")])
    every = vqa_rad.read(path, split="all")
    assert [(row.id, row.split) for row in every.rows] == [("0", "train"), ("1", "test"), ("2", "test"), ("3", "train")]
    test = vqa_rad.read(path, split="test")
    assert [row.id for row in test.rows] == ["1", "2"] and test.excluded == 2


def test_quirks_are_read_not_edited_away(tmp_path):
    path = write(tmp_path, [entry("0", "freeform", answer=3, answer_type="CLOSED ", image_organ="ABD")])
    (row,) = vqa_rad.read(path, split="train").rows
    assert (row.id, row.answer, row.answer_type, row.organ) == ("0", "3", "CLOSED", "abdomen")
    assert (row.phrase_type, row.question_type, row.image_name) == ("freeform", "PRES", "synpic1.jpg")


def test_split_has_no_default_and_must_be_one_of_the_table(tmp_path):
    path = write(tmp_path, [entry(1, "para")])
    with pytest.raises(TypeError, match="split"):
        vqa_rad.read(path)
    with pytest.raises(ValueError, match=r"vqa_rad split 'val' is not one of \['all', 'test', 'train'\]"):
        vqa_rad.read(path, split="val")


def test_unknown_phrase_type_is_reported_whatever_split_is_asked(tmp_path):
    path = write(tmp_path, [entry(7, "test_other"), entry(8, "para")])
    for split in ("train", "test"):
        (bad,) = vqa_rad.read(path, split=split).malformed
        assert (bad.id, bad.kind, bad.where) == ("7", "bad_value", "VQA_RAD.json record 0")
        assert bad.detail.startswith("VQA_RAD.json record 0 (qid 7): unknown phrase_type 'test_other'; expected one of")


def test_malformed_entry_keeps_its_place_and_reading_goes_on(tmp_path):
    broken = entry(5, "test_para")
    del broken["question"]
    path = write(tmp_path, [entry(4, "test_para"), broken, entry(6, "test_para")])
    read = vqa_rad.read(path, split="test")
    assert [item.id for item in read.entries] == ["4", "5", "6"]
    assert read.entries[1] == Malformed("5", "missing_field", "VQA_RAD.json record 1 (qid 5): missing field 'question'",
                                        "VQA_RAD.json record 1")


def test_entry_left_out_by_the_split_is_excluded_not_checked(tmp_path):
    broken = entry(5, "para")
    del broken["answer"]
    read = vqa_rad.read(write(tmp_path, [broken]), split="test")
    assert read.entries == [] and read.excluded == 1


def test_entry_without_qid_is_reported_without_an_id(tmp_path):
    no_id = entry(1, "para")
    del no_id["qid"]
    (bad,) = vqa_rad.read(write(tmp_path, [no_id]), split="train").malformed
    assert (bad.id, bad.kind) == (None, "missing_field") and bad.detail == "VQA_RAD.json record 0: missing field 'qid'"


def test_images_are_looked_up_in_images_when_the_file_sits_beside_one(tmp_path):
    path = write(tmp_path, [entry(1, "para")])
    assert vqa_rad.read(path, split="train").rows[0].image == tmp_path / "synpic1.jpg"
    (tmp_path / "images").mkdir()
    assert vqa_rad.read(path, split="train").rows[0].image == tmp_path / "images" / "synpic1.jpg"
    given = vqa_rad.read(path, split="train", image_root=tmp_path / "elsewhere")
    assert given.image_folder == tmp_path / "elsewhere"
    assert given.rows[0].image == tmp_path / "elsewhere" / "synpic1.jpg"
