"""Benchmark readers on small files written by the tests, and image checks in ``load_benchmark``."""

import io
import json

import pytest
from PIL import Image
from release_files import write_csv

from megatron_infimed.eval.benchmarks import BenchmarkFormatError, load_benchmark


def write_image(path, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 30, 200)).save(path, format=fmt)
    return path


def write_json(path, records):
    path.write_text(json.dumps(records))
    return path


def vqa_rad_record(qid, phrase_type, answer, answer_type="CLOSED", image="img1.jpg"):
    return {"qid": qid, "phrase_type": phrase_type, "image_name": image, "question": f"question {qid}?",
            "answer": answer, "answer_type": answer_type, "question_rephrase": "NULL"}


@pytest.fixture
def vqa_rad_file(tmp_path):
    write_image(tmp_path / "images" / "img1.jpg", "JPEG")
    return write_json(tmp_path / "vqa.json", [
        vqa_rad_record("0", "test_freeform", "Yes"),
        vqa_rad_record(1, "freeform", "no"),
        vqa_rad_record(2, "test_para", 3, "OPEN "),
        vqa_rad_record(3, "test_freeform", "Left lung", "CLOSED "),
    ])


# --- vqa_rad ------------------------------------------------------------------------------------


def test_vqa_rad_test_split_keeps_test_phrase_types_with_string_ids(vqa_rad_file):
    questions = load_benchmark("vqa_rad", vqa_rad_file)
    assert [q.id for q in questions] == ["0", "2", "3"]


def test_vqa_rad_type_is_closed_only_for_yes_no_gold_whatever_answer_type_says(vqa_rad_file):
    questions = load_benchmark("vqa_rad", vqa_rad_file)
    assert [(q.answer, q.type) for q in questions] == [("Yes", "closed"), ("3", "open"), ("Left lung", "open")]


def test_vqa_rad_train_split_and_images_folder(vqa_rad_file, tmp_path):
    (question,) = load_benchmark("vqa_rad", vqa_rad_file, split="train")
    assert question.id == "1"
    assert question.image == tmp_path / "images" / "img1.jpg"
    assert question.skip_reason is None


def test_vqa_rad_unknown_phrase_type_names_the_record(tmp_path):
    path = write_json(tmp_path / "vqa.json", [vqa_rad_record(7, "test_other", "yes")])
    with pytest.raises(BenchmarkFormatError, match=r"record 0 \(qid 7\): unknown phrase_type 'test_other'"):
        load_benchmark("vqa_rad", path)


def test_vqa_rad_missing_field_names_record_and_field(tmp_path):
    record = vqa_rad_record(5, "test_para", "yes")
    del record["question"]
    path = write_json(tmp_path / "vqa.json", [vqa_rad_record(4, "test_para", "no"), record])
    with pytest.raises(BenchmarkFormatError, match=r"record 1 \(qid 5\): missing field 'question'"):
        load_benchmark("vqa_rad", path)


def test_several_malformed_records_fail_naming_the_first_and_counting_the_rest(tmp_path):
    records = [vqa_rad_record(1, "test_para", "yes"), vqa_rad_record(2, "test_para", None),
               vqa_rad_record(3, "test_para", None), vqa_rad_record(4, "test_para", None)]
    path = write_json(tmp_path / "vqa.json", records)
    message = r"record 1 \(qid 2\): missing field 'answer'; 3 malformed entries in all"
    with pytest.raises(BenchmarkFormatError, match=message):
        load_benchmark("vqa_rad", path)


def test_text_that_is_not_utf8_fails_naming_the_record_and_field(tmp_path):
    path = tmp_path / "vqa.json"
    raw = json.dumps([vqa_rad_record(1, "test_para", "PLACEHOLDER")]).encode()
    path.write_bytes(raw.replace(b"PLACEHOLDER", b"caf\xe9"))
    with pytest.raises(BenchmarkFormatError, match=r"record 0 \(qid 1\): answer is not valid UTF-8 text"):
        load_benchmark("vqa_rad", path, check_images=False)


def test_invalid_json_file_names_the_line(tmp_path):
    path = tmp_path / "vqa.json"
    path.write_text('[\n{"qid": 1,\n')
    with pytest.raises(BenchmarkFormatError, match=r"vqa.json: not valid JSON at line 3"):
        load_benchmark("vqa_rad", path)


# --- slake --------------------------------------------------------------------------------------


def slake_record(qid, lang, answer, answer_type):
    return {"qid": qid, "img_name": "xmlab1/source.jpg", "question": "q?", "answer": answer,
            "q_lang": lang, "answer_type": answer_type}


@pytest.fixture
def slake_file(tmp_path):
    write_image(tmp_path / "imgs" / "xmlab1" / "source.jpg", "JPEG")
    return write_json(tmp_path / "test.json", [
        slake_record(1, "en", "Yes", "CLOSED"),
        slake_record(2, "zh", "是", "CLOSED"),
        slake_record(3, "en", "Liver", "CLOSED"),
        slake_record(4, "en", "Brain", "OPEN"),
    ])


def test_slake_keeps_english_and_types_by_answer_type(slake_file, tmp_path):
    questions = load_benchmark("slake", slake_file)
    assert [(q.id, q.type) for q in questions] == [("1", "closed"), ("3", "closed"), ("4", "open")]
    assert questions[0].image == tmp_path / "imgs" / "xmlab1" / "source.jpg"


def test_slake_language_option_selects_other_languages(slake_file):
    assert [q.id for q in load_benchmark("slake", slake_file, language="zh")] == ["2"]
    assert len(load_benchmark("slake", slake_file, language="all")) == 4


def test_slake_unknown_answer_type_is_an_error(tmp_path):
    path = write_json(tmp_path / "test.json", [slake_record(9, "en", "x", "MAYBE")])
    with pytest.raises(BenchmarkFormatError, match=r"qid 9\): answer_type 'MAYBE'"):
        load_benchmark("slake", path)


def test_slake_question_without_answer_type_fails_since_it_decides_the_type(tmp_path):
    path = write_json(tmp_path / "test.json", [slake_record(1, "en", "Yes", "CLOSED"),
                                               slake_record(2, "en", "No", None)])
    with pytest.raises(BenchmarkFormatError, match=r"record 1 \(qid 2\): missing field 'answer_type'"):
        load_benchmark("slake", path)


def test_slake_questions_carry_modality_and_location(tmp_path):
    write_image(tmp_path / "imgs" / "xmlab1" / "source.jpg", "JPEG")
    labelled = {**slake_record(1, "en", "Yes", "CLOSED"), "modality": "CT", "location": "Lung"}
    path = write_json(tmp_path / "test.json", [labelled, slake_record(2, "en", "No", "CLOSED")])
    first, unlabelled = load_benchmark("slake", path)
    assert (dict(first.categories), dict(unlabelled.categories)) == ({"modality": "CT", "location": "lung"}, {})


# --- pathvqa ------------------------------------------------------------------------------------


def test_pathvqa_id_is_qid_when_present_else_the_index(tmp_path):
    write_image(tmp_path / "a.png")
    path = write_json(tmp_path / "pathvqa.json", [
        {"image": "a.png", "question": "q?", "answer": "no"},
        {"image": "a.png", "question": "q?", "answer": "in the canals of hering", "qid": "p7"},
        {"image": "a.png", "question": "q?", "answer": "yes"},
    ])
    questions = load_benchmark("pathvqa", path)
    assert [(q.id, q.type) for q in questions] == [("0", "closed"), ("p7", "open"), ("2", "closed")]


def test_pathvqa_questions_carry_answer_type_when_the_file_has_it(tmp_path):
    write_image(tmp_path / "a.png")
    path = write_json(tmp_path / "pathvqa.json", [
        {"image": "a.png", "question": "q?", "answer": "no", "answer_type": "yes/no"},
        {"image": "a.png", "question": "q?", "answer": "hering"},
    ])
    assert [dict(q.categories) for q in load_benchmark("pathvqa", path)] == [{"answer_type": "YES/NO"}, {}]


def test_vqa_rad_questions_carry_answer_type_question_type_and_organ(tmp_path):
    write_image(tmp_path / "images" / "img1.jpg", "JPEG")
    record = {**vqa_rad_record("0", "test_freeform", "Yes", "CLOSED "), "question_type": "POS, PRES",
              "image_organ": "ABD"}
    (question,) = load_benchmark("vqa_rad", write_json(tmp_path / "vqa.json", [record]))
    assert dict(question.categories) == {"answer_type": "CLOSED", "question_type": "POS, PRES",
                                         "image_organ": "abdomen"}


# --- pmc_vqa ------------------------------------------------------------------------------------


PMC_HEADER = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D"]


def test_pmc_vqa_reads_choices_and_turns_gold_text_into_a_letter(tmp_path):
    write_image(tmp_path / "images" / "fig.jpg", "JPEG")
    path = write_csv(tmp_path / "test.csv", PMC_HEADER, [
        ["fig.jpg", "Which plane?", "Sagittal", "A:Axial", "B:Sagittal", "C:Coronal", "D:Oblique"],
        ["fig.jpg", "Which organ?", "A", " A: Liver", " B: Kidney", "", ""],
    ])
    first, second = load_benchmark("pmc_vqa", path)
    assert (first.id, first.type, first.answer) == ("0", "choice", "B")
    assert dict(first.options) == {"A": "Axial", "B": "Sagittal", "C": "Coronal", "D": "Oblique"}
    assert (second.id, second.answer, dict(second.options)) == ("1", "A", {"A": "Liver", "B": "Kidney"})
    assert first.image == tmp_path / "images" / "fig.jpg"


def test_pmc_vqa_answer_label_column_wins(tmp_path):
    path = write_csv(tmp_path / "test.csv", PMC_HEADER + ["Answer_label"], [
        ["fig.jpg", "q?", "Coronal plane", "A:Axial", "B:Sagittal", "C:Coronal", "D:Oblique", "C"],
    ])
    assert load_benchmark("pmc_vqa", path, check_images=False)[0].answer == "C"


def test_pmc_vqa_missing_column_is_named(tmp_path):
    path = write_csv(tmp_path / "test.csv", ["Figure_path", "Question", "Answer", "Choice A"], [])
    with pytest.raises(BenchmarkFormatError, match=r"missing CSV column\(s\) \['Choice B'\]"):
        load_benchmark("pmc_vqa", path)


def test_pmc_vqa_gold_matching_no_option_names_the_line(tmp_path):
    path = write_csv(tmp_path / "test.csv", PMC_HEADER, [
        ["fig.jpg", "q?", "Axial", "A:Axial", "B:Sagittal", "", ""],
        ["fig.jpg", "q?", "Spleen", "A:Liver", "B:Kidney", "", ""],
    ])
    with pytest.raises(BenchmarkFormatError, match=r"line 3 \(row 1\): gold answer 'Spleen' matches 0"):
        load_benchmark("pmc_vqa", path, check_images=False)


# --- omnimedvqa ---------------------------------------------------------------------------------


def test_omnimedvqa_gold_text_becomes_letter_and_id_is_question_id(tmp_path):
    write_image(tmp_path / "Images" / "ct" / "1.png")
    path = write_json(tmp_path / "qa.json", [
        {"question_id": "ct_1", "question": "What is shown?", "gt_answer": "Pneumonia",
         "option_A": "Normal", "option_B": "Pneumonia", "option_C": "Tumour", "image_path": "Images/ct/1.png"},
        {"question": "Modality?", "gt_answer": "CT", "option_A": "CT", "option_B": "MRI",
         "image_path": "Images/ct/1.png"},
    ])
    first, second = load_benchmark("omnimedvqa", path)
    assert (first.id, first.answer, first.type) == ("ct_1", "B", "choice")
    assert (second.id, second.answer, list(second.options)) == ("1", "A", ["A", "B"])
    assert first.skip_reason is None


# --- jsonl --------------------------------------------------------------------------------------


def test_jsonl_types_follow_options_and_gold(tmp_path):
    write_image(tmp_path / "x.png")
    lines = [
        {"id": 1, "image": "x.png", "question": "Normal?", "answer": "No"},
        {"id": "two", "image": "x.png", "question": "Where?", "answer": "left lung"},
        {"id": 3, "image": None, "question": "Which?", "answer": "Kidney", "options": ["Liver", "Kidney"]},
    ]
    path = tmp_path / "bench.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    questions = load_benchmark("jsonl", path)
    assert [(q.id, q.type, q.answer) for q in questions] == [("1", "closed", "No"), ("two", "open", "left lung"),
                                                             ("3", "choice", "B")]
    assert questions[2].image is None and questions[2].skip_reason is None


def test_jsonl_bad_line_is_named(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text('{"id": 1, "question": "q", "answer": "yes"}\n{"id": 2, "question": \n')
    with pytest.raises(BenchmarkFormatError, match=r"bench.jsonl line 2: not valid JSON"):
        load_benchmark("jsonl", path)


# --- images and load_benchmark checks ------------------------------------------------------------


def jsonl_with_images(tmp_path, images):
    path = tmp_path / "bench.jsonl"
    records = [{"id": i, "image": image, "question": "q?", "answer": "yes"} for i, image in enumerate(images)]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_missing_and_unreadable_images_are_marked_skipped(tmp_path):
    write_image(tmp_path / "good.png")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(jpeg, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    path = jsonl_with_images(tmp_path, ["good.png", "absent.png", "garbage.png", "truncated.jpg"])
    reasons = [q.skip_reason for q in load_benchmark("jsonl", path)]
    assert reasons == [None, "image_missing", "image_unreadable", "image_unreadable"]


def test_image_root_overrides_the_data_folder(tmp_path):
    write_image(tmp_path / "elsewhere" / "good.png")
    path = jsonl_with_images(tmp_path, ["good.png"])
    (question,) = load_benchmark("jsonl", path, image_root=tmp_path / "elsewhere")
    assert question.image == tmp_path / "elsewhere" / "good.png" and question.skip_reason is None


def test_duplicate_question_ids_are_an_error(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text('{"id": 4, "question": "q", "answer": "yes"}\n{"id": "4", "question": "q", "answer": "no"}\n')
    with pytest.raises(BenchmarkFormatError, match=r"question id '4' appears more than once"):
        load_benchmark("jsonl", path)


def test_split_option_on_another_benchmark_is_an_error(tmp_path):
    path = jsonl_with_images(tmp_path, [])
    with pytest.raises(ValueError, match=r"\['split'\] do not apply to benchmark 'jsonl'"):
        load_benchmark("jsonl", path, split="test")


def test_unknown_benchmark_and_missing_file_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'mmmu'"):
        load_benchmark("mmmu", tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_benchmark("slake", tmp_path / "absent.json")


def test_jsonl_option_keys_must_be_letters(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text('{"id": 1, "question": "q", "answer": "x", "options": {"1": "x", "2": "y"}}\n')
    with pytest.raises(BenchmarkFormatError, match=r"line 1 \(id 1\): option keys \['1', '2'\] should be letters"):
        load_benchmark("jsonl", path)
