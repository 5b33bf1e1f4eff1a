"""``infimed-bench loader``: our loader (WebDataset shards → decoded, normalised, tokenised, packed
micro-batches, one worker process) vs a LLaVA-style map-style loader (a JSON file plus loose image
files, PIL decode + square pad + resize + normalise per item, padding collate, one worker) on the
same samples.

| side     | reads                                   | image work per sample                      |
|----------|-----------------------------------------|--------------------------------------------|
| ours     | shards written by ``prepare --image-size``| decode of an image already at model size  |
| baseline | the original JPEGs (VQA-RAD: ~500-1000 px)| decode, pad to square, resize, normalise |

Storing images at the model's size is the design choice being measured: it moves the resize
from every epoch to the one curation pass. The samples are VQA-RAD question/answer pairs (the
real images) or, when that folder is absent, synthetic medical records at 512 px.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from megatron_infimed.bench.report import BenchResult
from megatron_infimed.bench.timing import alternate, in_workdir, median
from megatron_infimed.data.chat_template import tokenize_conversation
from megatron_infimed.data.conversation_format import IMAGE_PLACEHOLDER
from megatron_infimed.data.pack import IGNORE_INDEX

DEFAULT_VQA_RAD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "vqa_rad"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vqa-rad", default=str(DEFAULT_VQA_RAD),
                        help="VQA-RAD release folder (synthetic medical data when it does not exist)")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--seq-length", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=8, help="baseline samples per padded batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where to prepare shards (default: a temporary folder)")


class LlavaStyleDataset(torch.utils.data.Dataset):
    """What a LLaVA training script does per item: open the image file, pad it to a square in the
    mean colour, resize, normalise, tokenise the conversation."""

    def __init__(self, records: list[dict], image_root: str, tokenizer, image_tokens: int, size: int,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        self.records, self.root, self.tokenizer = records, Path(image_root), tokenizer
        self.image_tokens, self.size = image_tokens, size
        self.mean, self.std = np.array(mean, np.float32), np.array(std, np.float32)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = Image.open(self.root / record["image"]).convert("RGB")
        w, h = image.size
        square = Image.new("RGB", (max(w, h),) * 2, tuple(int(m * 255) for m in self.mean))
        square.paste(image, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
        pixels = np.asarray(square.resize((self.size, self.size), Image.Resampling.BICUBIC), np.float32) / 255
        pixels = torch.from_numpy((pixels - self.mean) / self.std).permute(2, 0, 1)
        text = tokenize_conversation(record["conversations"], self.tokenizer, self.image_tokens, record["id"])
        return {"input_ids": text.input_ids, "labels": text.labels, "pixels": pixels}


def pad_collate(items: list[dict]) -> dict:
    longest = max(len(i["input_ids"]) for i in items)
    ids = torch.zeros(len(items), longest, dtype=torch.long)
    labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
    for r, item in enumerate(items):
        ids[r, :len(item["input_ids"])] = item["input_ids"]
        labels[r, :len(item["labels"])] = item["labels"]
    return {"input_ids": ids, "labels": labels, "attention_mask": ids.ne(0) | labels.ne(IGNORE_INDEX),
            "pixels": torch.stack([i["pixels"] for i in items])}


def source_records(args: argparse.Namespace, work: Path) -> tuple[list[dict], str, str]:
    """LLaVA records (id, image, conversations), their image root, and a description."""
    vqa = Path(args.vqa_rad)
    if (vqa / "VQA_RAD_Dataset_Public.json").is_file():
        raw = json.loads((vqa / "VQA_RAD_Dataset_Public.json").read_text())[:args.samples]
        records = [{"id": f"vqa_rad-{i}", "image": r["image_name"],
                    "conversations": [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{str(r['question']).strip()}"},
                                      {"from": "gpt", "value": str(r["answer"]).strip()}]}
                   for i, r in enumerate(raw)]
        return records, str(vqa / "images"), f"VQA-RAD ({vqa})"
    from megatron_infimed.demo.synthetic import generate_synthetic

    made = generate_synthetic(str(work / "synthetic"), args.samples, "medical", seed=0, image_size=512)
    return json.loads(Path(made.json_path).read_text()), made.image_root, "synthetic medical, 512 px"


def prepare_shards(records: list[dict], image_root: str, args: argparse.Namespace, work: Path) -> tuple[Path, list]:
    """Curate ``records`` into shards at the model's image size; returns the folder and the kept records."""
    from megatron_infimed.curation import PrepareConfig, prepare

    source = work / "records.json"
    source.write_text(json.dumps(records))
    out = work / "prepared"
    prepare(PrepareConfig(format="llava", input=str(source), image_root=image_root, out=str(out),
                          image_size=args.image_size, progress=False, overwrite=True))
    manifest = json.loads((out / "manifest.json").read_text())
    kept = [records[int(s["key"][:8])] for s in manifest["samples"]]  # keys start with the input position
    return out, kept


def train_tokenizer(records: list[dict], work: Path):
    from megatron_infimed.data.tokenizer import load_tokenizer, train_sentencepiece

    texts = [t["value"].replace(IMAGE_PLACEHOLDER, "") for r in records for t in r["conversations"]]
    return load_tokenizer(train_sentencepiece(texts, work / "tokenizer" / "sp", vocab_size=1000))


def run(args: argparse.Namespace) -> BenchResult:
    return in_workdir(args.workdir, "infimed-bench-loader-", lambda work: _measure(args, work))


def _measure(args: argparse.Namespace, work: Path) -> BenchResult:
    from megatron_infimed.config.presets import get_preset
    from megatron_infimed.config.run import BatchSection, DataConfig
    from megatron_infimed.data.loader import build_train_loader
    from megatron_infimed.data.tokenizer import align_model_config
    from megatron_infimed.model.token_reduction import tokens_per_image

    work.mkdir(parents=True, exist_ok=True)
    records, image_root, described = source_records(args, work)
    prepared, kept = prepare_shards(records, image_root, args, work)
    tokenizer = train_tokenizer(kept, work)
    preset = get_preset("infimed-1.7b")
    config = align_model_config(preset.with_overrides({"vision.image_size": args.image_size}), tokenizer)
    image_tokens = tokens_per_image(config)
    data = DataConfig(paths=(str(prepared),), num_workers=1, worker_processes=True, num_epochs=1, shuffle_buffer=0)
    batch = BatchSection(seq_length=args.seq_length)
    baseline_set = LlavaStyleDataset(kept, image_root, tokenizer, image_tokens, args.image_size,
                                     config.vision.image_mean, config.vision.image_std)
    counts = {}

    def ours():
        loader = build_train_loader(data, batch, config, tokenizer, dp_rank=0, dp_size=1, seed=1234)
        counts["ours"] = sum(len(pack.sample_ids) for pack in loader)
        counts["fill"] = loader.stats()["data/fill_ratio"]
        loader.close()

    def baseline():
        batches = torch.utils.data.DataLoader(baseline_set, batch_size=args.batch_size, num_workers=1,
                                              collate_fn=pad_collate)
        counts["baseline"] = sum(int(b["input_ids"].shape[0]) for b in batches)

    seconds = alternate({"ours": ours, "baseline": baseline}, repeats=args.repeats, warmup=0)
    if counts["ours"] != len(kept) or counts["baseline"] != len(kept):
        raise AssertionError(f"loaders saw {counts} samples, expected {len(kept)} each")
    ours_rate, base_rate = len(kept) / median(seconds["ours"]), len(kept) / median(seconds["baseline"])
    fields = {"samples_per_s": ours_rate, "baseline_samples_per_s": base_rate, "ratio": ours_rate / base_rate,
              "samples": len(kept), "dropped_by_curation": len(records) - len(kept), "image_size": args.image_size,
              "image_tokens": image_tokens, "seq_length": args.seq_length, "fill_ratio": counts["fill"],
              "baseline_batch_size": args.batch_size, "workers": 1, "data": described, "repeats": args.repeats,
              "targets": {"samples_per_s": ">= 150", "ratio": ">= 1.5"}}
    rows = [("ours: shards -> packs", ours_rate, median(seconds["ours"])),
            ("LLaVA-style: JSON + JPEGs -> padded", base_rate, median(seconds["baseline"]))]
    notes = [f"{len(kept)} samples of {described}, images to {args.image_size} px, one worker each (its start "
             f"included), packs of {args.seq_length}; median of {args.repeats}"]
    return BenchResult("loader", fields, ("side", "samples_per_s", "seconds"), rows, notes)
