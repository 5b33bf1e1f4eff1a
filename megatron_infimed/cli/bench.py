"""``infimed-bench NAME [--json] [options]``: side-by-side benchmarks against the baselines users
would otherwise pick. Each benchmark lives in ``megatron_infimed.bench.<name>`` and provides
``add_arguments(parser)`` and ``run(args) -> BenchResult``; ``docs/benchmarks.md`` has the method."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "packing": "online packing vs pad-to-longest and greedy knapsack (fill, us/sample)",
    "loader": "shards -> packed batches vs a LLaVA-style JSON + loose images loader (samples/s)",
    "train": "packed vs padded vs transformers Qwen3ForCausalLM padded (real tokens/s)",
    "attention": "packed per-sample attention vs dense causal over the pack (ms)",
    "convert": "export-hf of a >= 1 GB checkpoint vs copying the same bytes as safetensors (GB/s, RSS)",
    "generate": "greedy generation with vs without the KV cache (new tokens/s)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infimed-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, help_text in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
        importlib.import_module(f"megatron_infimed.bench.{name}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> None:
    from megatron_infimed.bench.report import emit

    args = build_parser().parse_args(argv)
    result = importlib.import_module(f"megatron_infimed.bench.{args.name}").run(args)
    emit(result, args.json)


if __name__ == "__main__":
    main()
