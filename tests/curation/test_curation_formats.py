"""Readers: one per --format, a common Record, named per-record errors, fail-fast on bad input."""

import json

import pytest
from curation_factories import llava, write_jsonl

from megatron_infimed.curation.formats import InputError, read_records
from megatron_infimed.curation.record import Record, RecordError


def test_llava_json_list_gives_records_with_resolved_image_paths(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([llava("a", "img/a.png"), llava("b", ["x.png", "y.png"])]))
    items = read_records("llava", str(path)).items
    assert [r.id for r in items] == ["a", "b"]
    assert items[0].image_paths == [str(tmp_path / "img/a.png")]
    assert items[1].image_paths == [str(tmp_path / "x.png"), str(tmp_path / "y.png")]
    assert items[0].conversations[1] == {"from": "gpt", "value": "yes"}


def test_llava_jsonl_malformed_line_is_a_named_error_and_other_lines_survive(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [llava("a", "a.png"), b'{"id": "b", "image": \n', llava("c", "c.png")])
    items = read_records("llava", path).items
    assert isinstance(items[0], Record) and isinstance(items[2], Record)
    assert isinstance(items[1], RecordError)
    assert items[1].reason == "parse/malformed_json"
    assert "line 2" in items[1].detail


@pytest.mark.parametrize(
    "conversations, reason",
    [
        ([], "parse/empty_conversation"),
        ([{"from": "human", "value": "<image>\nHi"}], "parse/no_assistant_turn"),
        ([{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}], "parse/bad_turn"),
    ],
)
def test_structurally_broken_conversations_are_named(tmp_path, conversations, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "z", "image": "a.png", "conversations": conversations}])
    (item,) = read_records("llava", path).items
    assert isinstance(item, RecordError) and item.reason == reason and item.id == "z"


def test_non_utf8_bytes_survive_reading_as_surrogates(tmp_path):
    raw = json.dumps(llava("u", "a.png", answer="PLACEHOLDER")).encode().replace(b"PLACEHOLDER", b"caf\xe9")
    (item,) = read_records("llava", write_jsonl(tmp_path / "d.jsonl", [raw + b"\n"])).items
    assert isinstance(item, Record)
    with pytest.raises(UnicodeEncodeError):
        item.conversations[1]["value"].encode("utf-8")


def test_captions_become_describe_conversations(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "c1", "image": "a.png", "caption": "Axial CT of the liver."}])
    (item,) = read_records("captions", path).items
    assert item.conversations == [{"from": "human", "value": "<image>\nDescribe this image."},
                                  {"from": "gpt", "value": "Axial CT of the liver."}]
    assert item.metadata["question_type"] == "caption"


def vqa_rad_rows():
    base = {"image_name": "synpic1.jpg", "image_organ": "CHEST", "question": "Is there a pneumothorax?",
            "answer": "No", "question_type": "PRES"}
    return [
        {**base, "qid": "0", "phrase_type": "freeform", "answer_type": "CLOSED "},
        {**base, "qid": 1, "phrase_type": "test_freeform", "answer_type": "CLOSED", "answer": 3},
        {**base, "qid": 2, "phrase_type": "test_para", "answer_type": "OPEN"},
        {**base, "qid": 3, "phrase_type": "para", "answer_type": "OPEN"},
    ]


def test_vqa_rad_splits_by_phrase_type_and_normalises_quirks(tmp_path):
    path = tmp_path / "VQA_RAD.json"
    path.write_text(json.dumps(vqa_rad_rows()))
    train = read_records("vqa_rad", str(path), split="train")
    test = read_records("vqa_rad", str(path), split="test")
    assert [r.id for r in train.items] == ["0", "3"] and train.excluded == 2
    assert [r.id for r in test.items] == ["1", "2"] and test.excluded == 2
    assert train.items[0].metadata["answer_type"] == "CLOSED"  # trailing space stripped
    assert train.items[0].metadata["organ"] == "chest"
    assert test.items[0].conversations[1]["value"] == "3"  # numeric answer as text


def test_slake_keeps_english_by_default(tmp_path):
    rows = [{"qid": 1, "img_name": "xmlab1/source.jpg", "question": "Which organ?", "answer": "Lung",
             "q_lang": "en", "modality": "CT", "location": "Chest_lung", "answer_type": "OPEN"},
            {"qid": 2, "img_name": "xmlab1/source.jpg", "question": "哪个器官?", "answer": "肺", "q_lang": "zh"}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(rows, ensure_ascii=False))
    (tmp_path / "imgs").mkdir()
    result = read_records("slake", str(path))
    assert [r.id for r in result.items] == ["1"] and result.excluded == 1
    assert result.items[0].image_paths == [str(tmp_path / "imgs" / "xmlab1/source.jpg")]
    assert result.items[0].metadata["modality"] == "CT"
    assert len(read_records("slake", str(path), language="all").items) == 2


def test_pathvqa_records_are_labelled_pathology_with_the_release_answer_type(tmp_path):
    path = tmp_path / "pathvqa.json"
    path.write_text(json.dumps([{"image": "train_0001.jpg", "question": "Is this a carcinoma?", "answer": "yes",
                                 "answer_type": "closed"}]))
    (item,) = read_records("pathvqa", str(path)).items
    assert item.metadata == {"answer_type": "CLOSED", "modality": "pathology"}
    assert item.image_paths == [str(tmp_path / "train_0001.jpg")] and item.id == "0"


def test_malformed_release_entries_are_parse_errors_in_file_order(tmp_path):
    rows = vqa_rad_rows()
    rows[1]["phrase_type"] = "test_other"
    path = tmp_path / "VQA_RAD.json"
    path.write_text(json.dumps(rows))
    result = read_records("vqa_rad", str(path), split="train")
    assert [(item.id, type(item).__name__) for item in result.items] == [("0", "Record"), ("1", "RecordError"),
                                                                        ("3", "Record")]
    error = result.items[1]
    assert error.reason == "parse/bad_value" and "unknown phrase_type 'test_other'" in error.detail
    assert error.location == "VQA_RAD.json record 1" and result.excluded == 1


def test_vqa_record_without_question_is_a_missing_field_error(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"image": "a.jpg", "answer": "yes"}]))
    (item,) = read_records("pathvqa", str(path)).items
    assert isinstance(item, RecordError) and item.reason == "parse/missing_field" and "question" in item.detail


def test_missing_input_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(InputError, match="nope.json"):
        read_records("llava", str(tmp_path / "nope.json"))


def test_unknown_format_is_an_error_listing_the_known_ones(tmp_path):
    with pytest.raises(InputError, match="unknown --format 'coco'.*llava"):
        read_records("coco", str(tmp_path / "x.json"))


def test_whole_json_file_that_is_not_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"id": 1,}\n]')
    with pytest.raises(InputError, match=r"bad.json: not valid JSON at line 2"):
        read_records("vqa_rad", str(path))
