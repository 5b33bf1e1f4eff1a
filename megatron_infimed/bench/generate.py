"""``infimed-bench generate``: greedy decoding with megatron-core's KV cache (``StaticInferenceContext``)
vs recomputing the whole sequence for every new token, through ``eval.generation.greedy_generate``.

Both sides decode the same prompts (one image + a question, as ``infimed-eval run`` builds them) for
exactly ``--new-tokens`` tokens: the end-of-sequence id is set to one no prompt can produce, so
neither side stops early. Token ids are compared, so a speed-up never hides a wrong cache.
"""

from __future__ import annotations

import argparse

import torch

from megatron_infimed.bench.report import BenchResult
from megatron_infimed.bench.timing import alternate, median
from megatron_infimed.bench.workload import build_model, small_model_config
from megatron_infimed.model.token_reduction import tokens_per_image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--new-tokens", type=int, default=128)
    # infimed-evaluate decodes 8 questions at a time; at 1 a cached CPU step is bound by per-op overhead,
    # not arithmetic (docs/benchmarks.md, generate, says why the default is 4).
    parser.add_argument("--batch-size", type=int, default=4, help="prompts decoded together")
    parser.add_argument("--prompt-text-tokens", type=int, default=32, help="text tokens after the image")
    # Large enough that recomputing ~300 tokens costs more than one step's fixed overhead.
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> BenchResult:
    from megatron_infimed.eval.generation import greedy_generate

    config = small_model_config(args.hidden_size, args.num_layers)
    model = build_model(config, args.seed).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(args.seed)
    image_tokens = tokens_per_image(config)
    prompts, images = [], []
    for _ in range(args.batch_size):
        text = torch.randint(0, config.image_token_id - 1, (args.prompt_text_tokens,), generator=g)
        prompts.append(torch.cat([torch.full((image_tokens,), config.image_token_id), text]).to(device))
        size = config.vision.image_size
        images.append((torch.rand(1, 3, size, size, generator=g) * 2 - 1).to(device))
    never = config.language.vocab_size  # outside the vocabulary: decoding runs all --new-tokens
    outputs = {}

    def side(use_cache: bool):
        def decode():
            outputs[use_cache] = greedy_generate(model, prompts, images, args.new_tokens, never, use_cache)
        return decode

    for use_cache in (True, False):  # warm-up on a few tokens: a full recompute run would double the cost
        greedy_generate(model, prompts, images, 2, never, use_cache)
    seconds = alternate({"kv_cache": side(True), "recompute": side(False)}, repeats=args.repeats, warmup=0)
    new_tokens = args.new_tokens * args.batch_size
    rate = {name: new_tokens / median(s) for name, s in seconds.items()}
    same = outputs[True] == outputs[False]
    fields = {"kv_speedup": rate["kv_cache"] / rate["recompute"],
              "kv_tokens_per_s": rate["kv_cache"], "recompute_tokens_per_s": rate["recompute"],
              "new_tokens": args.new_tokens, "batch_size": args.batch_size,
              "prompt_tokens": int(prompts[0].numel()), "identical_tokens": same,
              "model": {"hidden_size": args.hidden_size, "num_layers": args.num_layers,
                        "image_tokens": image_tokens},
              "repeats": args.repeats, "targets": {"kv_speedup": ">= 5"}}
    rows = [("kv cache", rate["kv_cache"], median(seconds["kv_cache"])),
            ("recompute", rate["recompute"], median(seconds["recompute"]))]
    notes = [f"{args.batch_size} prompt(s) of {fields['prompt_tokens']} tokens (1 image = {image_tokens} tokens), "
             f"{args.new_tokens} new tokens each; outputs identical: {same}; median of {args.repeats}"]
    return BenchResult("generate", fields, ("side", "new_tokens_per_s", "seconds"), rows, notes)
