"""One reader per ``--format``; each turns an input file into common ``Record``s.

| format   | input                                   | conversation                          |
|----------|-----------------------------------------|---------------------------------------|
| llava    | JSON list or JSONL of LLaVA records     | as given (``<image>`` placeholders)   |
| captions | JSONL ``{"id", "image", "caption"}``    | ``<image>\\nDescribe this image.`` -> caption |
| vqa_rad  | official VQA-RAD release JSON           | ``<image>\\n{question}`` -> answer     |
| slake    | SLAKE JSON (English subset by default)  | ``<image>\\n{question}`` -> answer     |
| pathvqa  | JSON list ``{"image","question","answer"}`` | ``<image>\\n{question}`` -> answer |

A whole file that is missing or not JSON is an error before any work starts (``InputError``);
a bad *record* is a ``RecordError`` value with a named reason and its line. Text is decoded
with ``surrogateescape`` so invalid UTF-8 survives as lone surrogates and is dropped by the
text-quality scorer with a reason, instead of failing the whole file.

Split/language selection happens here: selected records are the run's ``total``; the rest are
reported as ``excluded``, not as drops.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable

from megatron_infimed.curation.images import resolve_image_path
from megatron_infimed.curation.record import IMAGE_PLACEHOLDER, Record, RecordError, structural_error

CAPTION_PROMPT = "Describe this image."
VQA_RAD_TEST_PHRASES = frozenset({"test_freeform", "test_para"})
# The community split of VQA-RAD by phrase_type; evaluation reads the same table.
VQA_RAD_SPLITS = {
    "test": VQA_RAD_TEST_PHRASES,
    "train": frozenset({"freeform", "para"}),
    "all": VQA_RAD_TEST_PHRASES | {"freeform", "para"},
}
VQA_RAD_ORGANS = {"HEAD": "head", "CHEST": "chest", "ABD": "abdomen"}


class InputError(ValueError):
    """The input as a whole is unusable (missing file, unknown format, not JSON)."""


@dataclass(slots=True)
class ReadResult:
    items: list[Record | RecordError] = field(default_factory=list)
    excluded: int = 0  # records left out by --split / --language
    image_root: str = ""  # the folder image paths were resolved against (--image-root or the default)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def _load_json_file(path: str) -> object:
    with open(path, "rb") as f:
        text = _decode(f.read())
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc


def _json_list(path: str) -> list:
    data = _load_json_file(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _json_objects(path: str, result: "ReadResult"):
    """(location, record) for each object of a JSON list; anything else is a counted bad record."""
    for i, obj in enumerate(_json_list(path)):
        loc = f"{os.path.basename(path)}[{i}]"
        if not isinstance(obj, dict):
            result.items.append(RecordError(None, "parse/bad_record", f"{loc}: expected a JSON object", loc))
            continue
        yield loc, obj


def _jsonl_items(path: str) -> list[tuple[str, object]]:
    """(location, parsed object | RecordError) per non-blank line."""
    out = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw).strip()
            if not line:
                continue
            loc = f"{os.path.basename(path)}:{lineno}"
            try:
                out.append((loc, json.loads(line)))
            except json.JSONDecodeError as exc:
                out.append((loc, RecordError(None, "parse/malformed_json", f"{path} line {lineno}: {exc.msg}", loc)))
    return out


def _vqa_record(rid: str, source: str, image: str, question: object, answer: object, meta: dict, loc: str):
    if not isinstance(question, str) or not question.strip():
        return RecordError(rid, "parse/missing_field", f"{loc}: 'question' must be a non-empty string", loc)
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return RecordError(rid, "parse/missing_field", f"{loc}: 'answer' must be present and non-empty", loc)
    conversations = [
        {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question.strip()}"},
        {"from": "gpt", "value": str(answer).strip()},  # VQA-RAD has numeric answers
    ]
    return Record(rid, source, conversations, [image], meta, loc)


def _image_field(value: object) -> list[str] | None:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _llava_record(obj: object, loc: str, root: str, source: str) -> Record | RecordError:
    if not isinstance(obj, dict):
        return RecordError(None, "parse/bad_record", f"{loc}: expected a JSON object, got {type(obj).__name__}", loc)
    rid = str(obj.get("id", loc))
    images = _image_field(obj.get("image"))
    if images is None:
        return RecordError(rid, "parse/bad_field_type", f"{loc}: 'image' must be a string or list of strings", loc)
    conversations = obj.get("conversations")
    problem = structural_error(conversations)
    if problem:
        return RecordError(rid, problem[0], f"{loc} (id {rid}): {problem[1]}", loc)
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    turns = [{"from": t["from"], "value": t["value"]} for t in conversations]
    paths = [resolve_image_path(root, name) for name in images]
    return Record(rid, str(obj.get("source", source)), turns, paths, dict(meta), loc)


def read_llava(path: str, root: str, source: str, **_: object) -> ReadResult:
    result = ReadResult()
    if path.endswith(".jsonl"):
        pairs = _jsonl_items(path)
    else:
        pairs = [(f"{os.path.basename(path)}[{i}]", obj) for i, obj in enumerate(_json_list(path))]
    for loc, obj in pairs:
        result.items.append(obj if isinstance(obj, RecordError) else _llava_record(obj, loc, root, source))
    return result


def read_captions(path: str, root: str, source: str, **_: object) -> ReadResult:
    result = ReadResult()
    for loc, obj in _jsonl_items(path):
        if isinstance(obj, RecordError):
            result.items.append(obj)
            continue
        if not isinstance(obj, dict):
            result.items.append(RecordError(None, "parse/bad_record", f"{loc}: expected a JSON object", loc))
            continue
        rid = str(obj.get("id", loc))
        image, caption = obj.get("image"), obj.get("caption")
        if not isinstance(image, str) or not isinstance(caption, str) or not caption.strip():
            detail = f"{loc} (id {rid}): expected string 'image' and non-empty string 'caption'"
            result.items.append(RecordError(rid, "parse/missing_field", detail, loc))
            continue
        conversations = [
            {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{CAPTION_PROMPT}"},
            {"from": "gpt", "value": caption.strip()},
        ]
        meta = {"question_type": "caption", **(obj.get("metadata") or {})}
        result.items.append(Record(rid, source, conversations, [resolve_image_path(root, image)], meta, loc))
    return result


def read_vqa_rad(path: str, root: str, source: str, split: str = "train", **_: object) -> ReadResult:
    result = ReadResult()
    for loc, obj in _json_objects(path, result):
        is_test = str(obj.get("phrase_type", "")).strip() in VQA_RAD_TEST_PHRASES
        if split != "all" and is_test != (split == "test"):
            result.excluded += 1
            continue
        rid = str(obj.get("qid", loc))  # one qid is the string "0", the rest ints
        if not isinstance(obj.get("image_name"), str):
            result.items.append(RecordError(rid, "parse/missing_field", f"{loc}: 'image_name' missing", loc))
            continue
        organ = str(obj.get("image_organ", "")).strip().upper()
        meta = {
            "organ": VQA_RAD_ORGANS.get(organ, organ.lower() or None),
            "answer_type": str(obj.get("answer_type", "")).strip().upper() or None,  # "CLOSED " occurs
            "question_type": str(obj.get("question_type", "")).strip() or None,
            "phrase_type": obj.get("phrase_type"),
            "split": "test" if is_test else "train",
            "image_name": obj["image_name"],
        }
        image = resolve_image_path(root, obj["image_name"])
        result.items.append(_vqa_record(rid, source, image, obj.get("question"), obj.get("answer"), meta, loc))
    return result


def read_slake(path: str, root: str, source: str, language: str = "en", **_: object) -> ReadResult:
    result = ReadResult()
    for loc, obj in _json_objects(path, result):
        if language != "all" and obj.get("q_lang") != language:
            result.excluded += 1
            continue
        rid = str(obj.get("qid", loc))
        if not isinstance(obj.get("img_name"), str):
            result.items.append(RecordError(rid, "parse/missing_field", f"{loc}: 'img_name' missing", loc))
            continue
        meta = {
            "modality": obj.get("modality"),
            "organ": str(obj.get("location", "")).lower() or None,
            "answer_type": str(obj.get("answer_type", "")).strip().upper() or None,
            "content_type": obj.get("content_type"),
            "q_lang": obj.get("q_lang"),
            "img_id": obj.get("img_id"),
        }
        image = resolve_image_path(root, obj["img_name"])
        result.items.append(_vqa_record(rid, source, image, obj.get("question"), obj.get("answer"), meta, loc))
    return result


def read_pathvqa(path: str, root: str, source: str, **_: object) -> ReadResult:
    result = ReadResult()
    for i, obj in enumerate(_json_list(path)):
        loc = f"{os.path.basename(path)}[{i}]"
        rid = str(obj.get("qid", i)) if isinstance(obj, dict) else str(i)
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
            result.items.append(RecordError(rid, "parse/missing_field", f"{loc}: expected an object with 'image'", loc))
            continue
        answer_type = obj.get("answer_type")
        meta = {"answer_type": str(answer_type).strip().upper() if answer_type else None, "modality": "pathology"}
        image = resolve_image_path(root, obj["image"])
        result.items.append(_vqa_record(rid, source, image, obj.get("question"), obj.get("answer"), meta, loc))
    return result


def _default_root(path: str, subdir: str | None) -> str:
    base = os.path.dirname(os.path.abspath(path))
    if subdir and os.path.isdir(os.path.join(base, subdir)):
        return os.path.join(base, subdir)
    return base


# format -> (reader, image sub-folder looked for next to the input when --image-root is not given)
READERS: dict[str, tuple[Callable[..., ReadResult], str | None]] = {
    "llava": (read_llava, None),
    "captions": (read_captions, None),
    "vqa_rad": (read_vqa_rad, "images"),
    "slake": (read_slake, "imgs"),
    "pathvqa": (read_pathvqa, None),
}


def check_input(fmt: str, path: str | None) -> None:
    """Fail fast, before any work, on an unknown format or a missing input file."""
    if fmt not in READERS:
        raise InputError(f"unknown --format {fmt!r}; expected one of {sorted(READERS)} or 'synthetic'")
    if not path or not os.path.isfile(path):
        raise InputError(f"--input {path!r} is not a file (format {fmt!r} needs its JSON/JSONL file)")


def read_records(
    fmt: str, path: str, *, image_root: str | None = None, source: str | None = None, split: str = "train",
    language: str = "en",
) -> ReadResult:
    """Read every record of ``path`` in ``fmt``; see the module table."""
    check_input(fmt, path)
    reader, subdir = READERS[fmt]
    root = image_root or _default_root(path, subdir)
    result = reader(path, root, source or fmt, split=split, language=language)
    result.image_root = root
    return result
