"""``infimed-prepare``: parse flags, call ``curation.prepare``. See docs/curation.md.

``--format synthetic`` is not a curation format: the demo's generator writes LLaVA records first
(``demo/synthetic/prepare_input.py``), and curation reads them as ``llava``."""

from __future__ import annotations

import argparse
import os
import sys

from megatron_infimed.curation.decontaminate import ACTIONS, BenchmarkSpec, parse_benchmark_spec
from megatron_infimed.curation.formats import READERS, InputError
from megatron_infimed.curation.judge import JudgeConfig
from megatron_infimed.curation.pipeline import PrepareConfig, prepare
from megatron_infimed.demo.synthetic import DISTRIBUTIONS
from megatron_infimed.demo.synthetic.prepare_input import SyntheticSpec, generate_llava_input


def _benchmark_spec(text: str) -> BenchmarkSpec:
    try:
        return parse_benchmark_spec(text)
    except ValueError as exc:  # argparse prints an ArgumentTypeError's message as is
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infimed-prepare", description="Curate medical multimodal data into "
                                "quality-scored WebDataset shards.")
    p.add_argument("--format", required=True, choices=sorted(READERS) + ["synthetic"])
    p.add_argument("--input", help="input JSON/JSONL file (not for --format synthetic)")
    p.add_argument("--out", required=True, help="output folder: shards/, manifest.json, quality_report.*")
    p.add_argument("--image-root", help="folder image paths are relative to (default: next to --input)")
    p.add_argument("--allow-outside-image-root", action="store_true",
                   help="read images whose real path (symlinks followed) is outside the image root")
    p.add_argument("--source", help="dataset name stored with each sample (default: the format)")
    p.add_argument("--split", default="train", choices=["train", "test", "all"], help="vqa_rad split")
    p.add_argument("--language", default="en", help="slake q_lang to keep, or 'all'")
    p.add_argument("--image-size", type=int, help="store images letterboxed to N x N (e.g. 384)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--workers", type=int, default=1, help="processes that load and score records")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shuffle", action="store_true", help="shuffle record order (seeded) before sharding")
    p.add_argument("--domain", default="medical", choices=["medical", "general"],
                   help="general: medical relevance is scored but does not drop")
    p.add_argument("--quality-config", help="YAML overriding curation/quality.yaml")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("synthetic data (--format synthetic)")
    g.add_argument("--synthetic-n", type=int, default=1000)
    g.add_argument("--distribution", default="medical", choices=DISTRIBUTIONS)
    g.add_argument("--defect-rate", type=float, default=0.0, help="fraction of samples with an injected defect")
    g.add_argument("--synthetic-image-size", type=int, default=128, help="side of the generated images")
    g.add_argument("--synthetic-split", default="train")
    g = p.add_argument_group("model judge (OpenAI-compatible chat completions)")
    g.add_argument("--judge-url", help="base URL, e.g. http://127.0.0.1:8000/v1; enables the judge")
    g.add_argument("--judge-model")
    g.add_argument("--judge-dimensions", default="text_quality,medical_relevance,answer_reliability")
    g.add_argument("--judge-concurrency", type=int, default=4)
    g.add_argument("--judge-retries", type=int, default=3)
    g.add_argument("--judge-send-images", action="store_true")
    g.add_argument("--judge-cache", help="JSONL cache file (default: OUT/progress/judge_cache.jsonl)")
    g.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    g.add_argument("--judge-optional", action="store_true",
                   help="exit 0 even when every judge call failed (the samples keep their rule scores)")
    g = p.add_argument_group("benchmark contamination (docs/curation.md#benchmark-contamination)")
    g.add_argument("--decontaminate", nargs="+", action="extend", default=[], type=_benchmark_spec,
                   metavar="BENCH=PATH", help="evaluation sets, read as infimed-eval reads them (their scored split), "
                   "whose images and questions must not be trained on, e.g. vqa_rad=VQA_RAD_Dataset_Public.json")
    g.add_argument("--decontaminate-action", default="question", choices=sorted(ACTIONS),
                   help="question (default): drop a record whose image and question match a benchmark item, flag "
                   "one whose image only matches; drop: drop both; flag: drop neither, flag both")
    g = p.add_argument_group("clinician review")
    g.add_argument("--review-export", help="write a stratified sample to this CSV for grading")
    g.add_argument("--review-samples", type=int, default=200)
    g.add_argument("--review-grades", help="graded CSV: human grades override the automatic scores")
    return p


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    judge = None
    if args.judge_url:
        if not args.judge_model:
            raise InputError("--judge-url needs --judge-model")
        judge = JudgeConfig(base_url=args.judge_url, model=args.judge_model,
                            dimensions=tuple(d.strip() for d in args.judge_dimensions.split(",") if d.strip()),
                            concurrency=args.judge_concurrency, retries=args.judge_retries,
                            send_images=args.judge_send_images, api_key_env=args.judge_api_key_env,
                            cache_path=args.judge_cache or os.path.join(args.out, "progress", "judge_cache.jsonl"))
    return PrepareConfig(
        format=args.format, input=args.input, out=args.out, image_root=args.image_root,
        allow_outside_image_root=args.allow_outside_image_root, source=args.source,
        split=args.split, language=args.language, image_size=args.image_size, shard_size=args.shard_size,
        workers=args.workers, seed=args.seed, shuffle=args.shuffle, domain=args.domain,
        quality_config=args.quality_config, judge=judge, review_grades=args.review_grades,
        review_export=args.review_export, review_samples=args.review_samples,
        decontaminate=tuple(args.decontaminate), decontaminate_action=args.decontaminate_action,
        overwrite=args.overwrite, progress=not args.no_progress)


def synthetic_spec_from_args(args: argparse.Namespace) -> SyntheticSpec:
    return SyntheticSpec(n=args.synthetic_n, distribution=args.distribution, defect_rate=args.defect_rate,
                         image_size=args.synthetic_image_size, split=args.synthetic_split)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        if args.format == "synthetic":
            config = generate_llava_input(config, synthetic_spec_from_args(args))
        report = prepare(config)
    except (InputError, ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"infimed-prepare: error: {exc}\n")
    dropped = sum(report["dropped"].values())
    print(f"kept {report['kept']} of {report['total']} records ({dropped} dropped); "
          f"report: {os.path.join(args.out, 'quality_report.md')}")
    if report.get("judge", {}).get("all_failed") and not args.judge_optional:
        parser.exit(2, "infimed-prepare: error: every model-judge call failed (see the warning above); fix "
                       "--judge-url and rerun with --overwrite, or pass --judge-optional to accept rule scores\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
