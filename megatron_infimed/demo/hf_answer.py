"""Answer one question with the exported model through transformers (``trust_remote_code``).

The demo's tokenizer is SentencePiece, which ``AutoTokenizer`` cannot load, so the prompt is
built with our tokenizer and chat template and decoded with it; the model is transformers'.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_infimed.eval.generation import MegatronGenerator


def answer_with_transformers(hf_dir: Path, checkpoint: Path, question: dict, max_new_tokens: int = 8) -> str:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(hf_dir), trust_remote_code=True).eval()
    reference = MegatronGenerator(checkpoint)  # the same tokenizer, template and image preprocessing
    ids, pixels = reference.prompt(question["question"], question["image"])
    with torch.no_grad():
        out = model.generate(input_ids=ids.view(1, -1), pixel_values=pixels, max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=reference.tokenizer.eos_id,
                             pad_token_id=reference.tokenizer.pad_id)
    new = out[0, ids.numel():].tolist()
    if reference.tokenizer.eos_id in new:
        new = new[: new.index(reference.tokenizer.eos_id)]
    return reference.tokenizer.decode(new).strip()
