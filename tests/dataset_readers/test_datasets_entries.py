"""Rules every release reader shares: field checks, whole-file errors, text, image folder, registry."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_infimed.datasets import RELEASES, vqa_rad
from megatron_infimed.datasets.entries import Entry, EntryError
from megatron_infimed.datasets.files import ReleaseFileError, image_folder, load_json_list, resolve_image


def entry(**fields):
    return Entry(fields, "data.json record 4", 4)


# --- fields -------------------------------------------------------------------------------------


def test_text_field_takes_strings_and_numbers_stripped():
    assert entry(answer=" Left lung ").text("answer") == "Left lung"
    assert entry(answer=3).text("answer") == "3"


@pytest.mark.parametrize("value, kind, message", [
    (None, "missing_field", "missing field 'answer'"),
    ("  ", "missing_field", "field 'answer' is empty"),
    (True, "bad_field_type", "field 'answer' should be text, got True"),
    (["yes"], "bad_field_type", "field 'answer' should be text, got ['yes']"),
])
def test_bad_text_field_names_the_entry_and_the_field(value, kind, message):
    with pytest.raises(EntryError) as raised:
        entry(answer=value).text("answer")
    assert raised.value.kind == kind and str(raised.value) == f"data.json record 4: {message}"


def test_messages_name_the_id_once_it_is_read():
    e = entry(qid=0)
    assert e.read_id("qid") == "0" and e.where == "data.json record 4 (qid 0)"
    with pytest.raises(EntryError, match=r"^data.json record 4 \(qid 0\): missing field 'question'$"):
        e.text("question")


def test_optional_id_falls_back_to_the_index_and_bool_is_no_id():
    assert entry().read_id("qid", optional=True) == "4"
    with pytest.raises(EntryError, match="id field 'qid' should be a string or integer, got True"):
        entry(qid=True).read_id("qid")


def test_label_is_none_when_absent_or_blank():
    e = entry(answer_type=" ", organ="CHEST")
    assert (e.label("answer_type"), e.label("modality"), e.label("organ")) == (None, None, "CHEST")


def test_entry_that_is_not_an_object_is_a_bad_record():
    with pytest.raises(EntryError, match="expected a JSON object, got str") as raised:
        Entry("text", "data.json record 0", 0).text("question")
    assert raised.value.kind == "bad_record"


def test_gold_letter_from_the_letter_or_the_option_text():
    options = {"A": "Liver", "B": "Kidney"}
    assert entry().gold_letter("b", options) == "B"
    assert entry().gold_letter(" kidney", options) == "B"
    with pytest.raises(EntryError, match=r"gold answer 'Liver' matches 2 of the options"):
        entry().gold_letter("Liver", {"A": "Liver", "B": "liver"})


# --- files --------------------------------------------------------------------------------------


def test_file_that_is_not_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"id": 1,}\n]')
    with pytest.raises(ReleaseFileError, match=r"bad.json: not valid JSON at line 2 column 11: Expecting property"):
        load_json_list(path)


def test_file_that_is_not_a_list_is_refused(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text('{"qid": 1}')
    with pytest.raises(ReleaseFileError, match=r"obj.json: expected a JSON list of records, got dict"):
        load_json_list(path)


def test_byte_that_is_not_utf8_stays_in_its_entry_as_a_surrogate(tmp_path):
    entries = [{"qid": i, "phrase_type": "para", "image_name": "a.jpg", "question": "PLACEHOLDER", "answer": "yes"}
               for i in range(2)]
    path = tmp_path / "VQA_RAD.json"
    path.write_bytes(json.dumps(entries).encode().replace(b"PLACEHOLDER", b"caf\xe9", 1))
    first, second = vqa_rad.read(path, split="train").rows
    assert first.question == "caf\udce9" and second.question == "PLACEHOLDER"


def test_image_folder_is_the_given_root_else_the_data_folder_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert image_folder("data.json", "imgs/") == Path("imgs")  # as given
    assert image_folder("data.json") == tmp_path
    assert image_folder("data.json", None, "images") == tmp_path  # no images/ here
    (tmp_path / "images").mkdir()
    assert image_folder("data.json", None, "images") == tmp_path / "images"


def test_image_name_without_suffix_takes_the_first_that_exists(tmp_path):
    (tmp_path / "slide.png").write_bytes(b"x")
    (tmp_path / "slide.dcm").write_bytes(b"x")
    assert resolve_image(tmp_path, "slide") == tmp_path / "slide.png"
    assert resolve_image(tmp_path, "absent") == tmp_path / "absent"
    assert resolve_image(tmp_path, "/elsewhere/a.jpg") == Path("/elsewhere/a.jpg")  # an absolute name stands


# --- registry and layering ----------------------------------------------------------------------


def test_registry_names_each_release_and_its_selection():
    assert {name: release.selection for name, release in RELEASES.items()} == {
        "vqa_rad": ("split",), "slake": ("language",), "pathvqa": (), "pmc_vqa": (), "omnimedvqa": ()}


@pytest.mark.slow  # a fresh Python subprocess
def test_datasets_import_nothing_above_them():
    code = "import json, sys, megatron_infimed.datasets; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    above = ("torch", "megatron.", "megatron_infimed.curation", "megatron_infimed.eval", "megatron_infimed.training")
    assert [m for m in json.loads(result.stdout) if m == "torch" or m.startswith(above)] == []
