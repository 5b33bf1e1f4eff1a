"""``infimed-eval``: score medical VQA benchmarks (rules: docs/evaluation.md).

    infimed-eval score --benchmark vqa_rad --data VQA_RAD_Dataset_Public.json \
        --predictions preds.jsonl --output runs/eval
    infimed-eval run --model CKPT --benchmark slake --data Slake1.0/test.json --output runs/eval \
        --scoring medevalkit --bootstrap 1000
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_infimed.eval.benchmarks import BENCHMARKS, load_benchmark
from megatron_infimed.eval.generation import load_answer_fn
from megatron_infimed.eval.report import RULES, ScoringConfig
from megatron_infimed.eval.runner import run_benchmark, score_predictions


def _add_benchmark_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--data", required=True, help="the benchmark file (JSON, CSV or JSONL)")
    parser.add_argument("--image-root", help="folder image paths are relative to (default: beside --data); "
                                             "run only: score does not open images")
    parser.add_argument("--split", help="vqa_rad only: test (default), train or all")
    parser.add_argument("--language", help="slake only: q_lang to keep, en (default), zh or all")
    parser.add_argument("--output", required=True, help="folder for predictions.jsonl, results.json, results.md")
    defaults = ScoringConfig()
    parser.add_argument("--scoring", choices=sorted(RULES), default=defaults.rules,
                        help="strict (default): word-level yes/no, normalised exact match; "
                             "medevalkit: MedEvalKit's rules, for published tables (docs/evaluation.md)")
    parser.add_argument("--bootstrap", type=int, default=defaults.bootstrap, metavar="N",
                        help=f"resamples for 95%% confidence intervals (default {defaults.bootstrap}); 0: none")
    parser.add_argument("--bootstrap-seed", type=int, default=defaults.seed,
                        help=f"seed of the bootstrap (default {defaults.seed})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infimed-eval", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="score an existing predictions JSONL ({id, prediction} lines)")
    _add_benchmark_flags(score)
    score.add_argument("--predictions", required=True)

    run = commands.add_parser("run", help="answer the benchmark with a model, then score it")
    _add_benchmark_flags(run)
    run.add_argument("--model", required=True, help="a training checkpoint or an exported Hugging Face folder")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--max-new-tokens", type=int, default=64)
    run.add_argument("--limit", type=int, help="evaluate only the first N questions")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = ScoringConfig(rules=args.scoring, bootstrap=args.bootstrap, seed=args.bootstrap_seed)
        # score reads only the gold answers; checking images would need them and skip questions without.
        questions = load_benchmark(
            args.benchmark, args.data, image_root=args.image_root, split=args.split, language=args.language,
            check_images=args.command == "run",
        )
        if args.command == "score":
            results = score_predictions(questions, args.predictions, args.output, benchmark=args.benchmark,
                                        config=config)
        else:
            answer_fn = load_answer_fn(args.model, args.max_new_tokens)
            results = run_benchmark(
                questions, answer_fn, args.output,
                batch_size=args.batch_size, limit=args.limit, benchmark=args.benchmark, config=config,
            )
    except (ValueError, FileNotFoundError, NotImplementedError) as err:
        print(f"infimed-eval: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
