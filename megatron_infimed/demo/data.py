"""Demo data: three synthetic distributions, curated into shards, plus closed-question test sets.

| distribution | used by                         | test set            |
|--------------|---------------------------------|---------------------|
| general      | stage1, replay share of stage3  |                     |
| medical      | pretrain, stage2, stage3        | in_distribution     |
| shifted      | stage3                          | shifted             |
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_infimed.curation import PrepareConfig, prepare
from megatron_infimed.data.conversation_format import IMAGE_PLACEHOLDER
from megatron_infimed.data.tokenizer import train_sentencepiece
from megatron_infimed.demo.synthetic import DISTRIBUTIONS, generate_synthetic


def build_datasets(workdir: Path, train_size: int, test_size: int, image_size: int, seed: int) -> dict:
    """Prepared shard folders per distribution, closed-question test files, and quality reports."""
    raw, prepared, tests = workdir / "raw", workdir / "prepared", workdir / "eval_data"
    tests.mkdir(parents=True, exist_ok=True)
    out = {"prepared": {}, "tests": {}, "reports": {}}
    for name in DISTRIBUTIONS:
        train = generate_synthetic(str(raw), train_size, name, seed=seed, image_size=image_size,
                                   defect_rate=0.05)
        report = prepare(PrepareConfig(
            format="llava", input=train.json_path, image_root=train.image_root, out=str(prepared / name),
            source=f"synthetic-{name}", image_size=image_size, seed=seed, overwrite=True, progress=False,
            domain="general" if name == "general" else "medical"))
        out["prepared"][name] = prepared / name
        out["reports"][name] = report
        if name != "general":
            test = generate_synthetic(str(raw), test_size, name, seed=seed + 1, image_size=image_size, split="test")
            out["tests"][name] = write_closed_questions(Path(test.json_path), Path(test.image_root),
                                                        tests / f"{name}_test.jsonl")
    return out


def write_closed_questions(source: Path, image_root: Path, target: Path) -> Path:
    """The yes/no questions of a synthetic file as a ``jsonl`` benchmark."""
    lines = []
    for record in json.loads(source.read_text()):
        turns = record["conversations"]
        answer = turns[1]["value"].strip()
        if answer.lower() not in ("yes", "no"):
            continue
        question = turns[0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        lines.append({"id": record["id"], "image": str(image_root / record["image"]), "question": question,
                      "answer": answer})
    target.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return target


def train_tokenizer(workdir: Path, vocab_size: int) -> Path:
    """A SentencePiece model trained on the text of every raw training record."""
    texts = []
    for path in sorted((workdir / "raw").glob("*_train.json")):
        for record in json.loads(path.read_text()):
            texts.extend(turn["value"].replace(IMAGE_PLACEHOLDER, " ") for turn in record["conversations"])
    return train_sentencepiece(texts, workdir / "tokenizer" / "demo", vocab_size=vocab_size)
