"""``prepare``: raw records in, quality-scored WebDataset shards plus reports out.

    read (formats.py) -> load + score + benchmark match in workers (images.py, quality/, decontaminate.py)
    -> judge / human grades -> keep/drop decision -> dedup -> shards + progress chunks (shards.py)
    -> manifest + reports

Workers only load, score and match benchmarks (pure functions of a record), in a process pool consumed with
``imap`` so results come back in input order; everything order-dependent (judge batches,
human overrides, dedup, shard assignment) happens in the main process. That is what makes
``--workers 4`` produce the same bytes as ``--workers 1``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import re
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from megatron_infimed.curation.decontaminate import Action, BenchmarkSpec, ContaminationGuard
from megatron_infimed.curation.dedup import Deduplicator, image_signature, sample_hash, text_hash
from megatron_infimed.curation.formats import check_input, read_records
from megatron_infimed.curation.images import ImageLoadError, LoadedImage, check_under_root, load_image
from megatron_infimed.curation.judge import JudgeConfig, ModelJudge
from megatron_infimed.curation.quality import QualityConfig, build_scorers, decide, score_all
from megatron_infimed.curation.record import Record, RecordError, conversation_text
from megatron_infimed.curation.report import build_report, render_markdown, write_histograms
from megatron_infimed.curation.review import agreement, export_review_csv, import_review_grades
from megatron_infimed.curation.shards import (
    ShardStore,
    atomic_write_bytes,
    atomic_write_json,
    build_manifest,
    shard_json_bytes,
)

CHARS_PER_TOKEN = 4  # text_tokens_estimate = ceil(text_chars / 4), the usual English BPE ratio
JUDGE_BATCH = 64


@dataclass(frozen=True, kw_only=True, slots=True)
class PrepareConfig:
    format: str  # a key of formats.READERS
    out: str
    input: str | None = None
    image_root: str | None = None
    allow_outside_image_root: bool = False  # else an image whose real path leaves image_root is dropped
    source: str | None = None  # dataset name stored per sample; default: the format
    split: str = "train"  # vqa_rad: train | test | all
    language: str = "en"  # slake: q_lang to keep, or "all"
    image_size: int | None = None  # store letterboxed N x N images
    shard_size: int = 1000
    workers: int = 1
    seed: int = 0
    shuffle: bool = False  # shuffle record order (seeded) before sharding
    domain: str = "medical"  # "general": medical_relevance is scored but never drops
    quality_config: str | None = None
    judge: JudgeConfig | None = None
    review_grades: str | None = None
    review_export: str | None = None
    review_samples: int = 200
    decontaminate: tuple[BenchmarkSpec, ...] = ()  # evaluation sets to keep out of the training data
    decontaminate_action: Action = "question"  # see decontaminate.py: what each kind of match does
    overwrite: bool = False
    progress: bool = True


def make_key(position: int, sample_id: str) -> str:
    """Unique, sortable, dot-free: position 7, id "synpic.54610" -> "00000007-synpic_54610"."""
    return f"{position:08d}-{re.sub(r'[^A-Za-z0-9_-]+', '_', sample_id)[:48]}"


# ---- worker side: a pure function of one record ----------------------------------------------
_WORKER: dict = {}


def _init_worker(quality: QualityConfig, image_size: int | None, real_root: Path | None,
                 guard: ContaminationGuard | None) -> None:
    _WORKER.update(scorers=build_scorers(quality), quality=quality, image_size=image_size, real_root=real_root,
                   guard=guard, cache=OrderedDict())


def _load_cached(path: str) -> LoadedImage:
    if _WORKER["real_root"] is not None:
        check_under_root(path, _WORKER["real_root"])
    # VQA data asks several questions about one image: keep recent decodes.
    cache: OrderedDict = _WORKER["cache"]
    if path in cache:
        cache.move_to_end(path)
        return cache[path]
    image = load_image(path, max_pixels=_WORKER["quality"].max_pixels, image_size=_WORKER["image_size"])
    cache[path] = image
    if len(cache) > 256:
        cache.popitem(last=False)
    return image


def process_item(item: tuple[int, Record | RecordError]) -> tuple[dict, dict]:
    """(progress line, payload) for one record; never raises for a bad record."""
    position, record = item
    sample_id = record.id if record.id is not None else record.location
    line = {"position": position, "id": sample_id, "key": make_key(position, sample_id), "reasons": [],
            "detail": "", "shard": None}
    if isinstance(record, RecordError):
        return {**line, "source": "", "reasons": [record.reason], "detail": record.detail}, {}
    line["source"] = record.source
    try:
        images = [_load_cached(path) for path in record.image_paths]
    except ImageLoadError as exc:
        return {**line, "reasons": [exc.reason], "detail": f"id {sample_id}: {exc.detail}"}, {}
    try:
        scored = score_all(_WORKER["scorers"], record, images)
        text = conversation_text(record.conversations)
        line.update(
            scores={dim: round(s.score, 4) for dim, s in scored.items()},
            issues={dim: list(s.issues) for dim, s in scored.items() if s.issues},
            sample_hash=sample_hash([im.raw for im in images], text),
            text_hash=text_hash(text),
            signatures=[image_signature(im.thumbnail) for im in images],
            text=text.encode("utf-8", "backslashreplace").decode("utf-8"),
            image_paths=list(record.image_paths),
            text_chars=len(text),
            images=len(images),
            text_tokens_estimate=math.ceil(len(text) / CHARS_PER_TOKEN),
        )
        contamination = _WORKER["guard"].check(record.conversations, images) if _WORKER["guard"] else None
        if contamination:  # absent when clean, so runs without the guard write the same progress lines
            line["contamination"] = contamination
    except Exception as exc:  # a scorer bug must not end the run: the record is dropped and named
        return {**line, "reasons": [f"error/{type(exc).__name__}"], "detail": f"id {sample_id}: {exc}"}, {}
    payload = {"members": [(im.member_ext, im.member_bytes) for im in images],
               "conversations": record.conversations, "metadata": record.metadata}
    return line, payload


# ---- main side ---------------------------------------------------------------------------------
def _shard_sample(line: dict, payload: dict) -> dict:
    members = payload["members"]
    exts = [ext for ext, _ in members] if len(members) == 1 else [f"{i}.{ext}" for i, (ext, _) in enumerate(members)]
    meta = {"id": line["id"], "source": line["source"], "conversations": payload["conversations"],
            "image_members": exts, "metadata": payload["metadata"],
            "quality": {"scores": line["scores"], "decision": "keep", "reasons": [],
                        "sources": line.get("score_sources", {})}}
    sample = {"__key__": line["key"], "json": shard_json_bytes(meta)}
    sample.update({ext: data for ext, (_, data) in zip(exts, members)})
    return sample


def _apply_overrides(line: dict, judged: dict | None, human: dict | None) -> None:
    """Judge lowers (min), human grades replace; issue names say which source decided.

    Dimensions the judge failed on are listed in ``judge_failed``: the outcome, not only a counter
    of this process, says the rule score stood alone, so a resumed run still reports them.
    """
    sources = {dim: "rule" for dim in line["scores"]}
    failed = sorted(dim for dim, score in (judged or {}).items() if score is None)
    if failed:
        line["judge_failed"] = failed
    for dim, score in (judged or {}).items():
        if score is not None and score < line["scores"][dim]:
            line["scores"][dim] = round(score, 4)
            line["issues"].setdefault(dim, ["judge_low"])
            sources[dim] = "judge"
    for dim, grade in (human or {}).items():
        line.setdefault("review", {})[dim] = [line["scores"][dim], round(grade, 4)]
        line["scores"][dim] = round(grade, 4)
        line["issues"][dim] = ["human_grade"]
        sources[dim] = "human"
    line["score_sources"] = sources


def _fingerprint(config: PrepareConfig, quality: QualityConfig, guard: ContaminationGuard | None) -> dict:
    data = asdict(config)
    for volatile in ("workers", "progress", "overwrite", "review_export", "review_samples"):
        data.pop(volatile)  # do not change the output bytes
    data["quality"] = asdict(quality)
    # The benchmarks as read (a digest of their images and questions), not only their paths; absent
    # without --decontaminate, so runs from before the guard still resume.
    for key in ("decontaminate", "decontaminate_action"):
        data.pop(key)
    if guard:
        data["decontaminate"] = guard.fingerprint()
    return json.loads(json.dumps(data))  # as run.json reads back (tuples become lists), or no judged run resumes


def prepare(config: PrepareConfig) -> dict:
    """Run the curation stage; returns the quality report (also written to OUT/quality_report.json)."""
    check_input(config.format, config.input)  # fail before any work
    if config.shard_size < 1 or config.workers < 1:
        raise ValueError(f"--shard-size and --workers must be >= 1, got {config.shard_size} and {config.workers}")
    if config.domain not in ("medical", "general"):
        raise ValueError(f"--domain must be 'medical' or 'general', got {config.domain!r}")
    human = import_review_grades(config.review_grades) if config.review_grades else {}
    quality = QualityConfig.load(config.quality_config)
    guard = (ContaminationGuard.load(config.decontaminate, config.decontaminate_action, max_pixels=quality.max_pixels)
             if config.decontaminate else None)
    os.makedirs(config.out, exist_ok=True)
    if config.domain == "general":
        quality = quality.with_thresholds(medical_relevance=None)
    read = read_records(config.format, config.input, image_root=config.image_root, source=config.source,
                        split=config.split, language=config.language)
    items = list(enumerate(read.items))
    if config.shuffle:
        random.Random(config.seed).shuffle(items)

    store = ShardStore(config.out)
    chunks = store.open_run(_fingerprint(config, quality, guard), overwrite=config.overwrite)
    for marker in ("manifest.json", "quality_report.json"):  # completion markers come back at the end
        if os.path.exists(os.path.join(config.out, marker)):
            os.remove(os.path.join(config.out, marker))
    lines = [line for chunk in chunks for line in chunk]
    dedup = Deduplicator(quality.near_hamming, quality.near_colour)
    for line in lines:
        if not line["reasons"]:
            dedup.add(line["sample_hash"], line["text_hash"], line["signatures"])
    n_shards = len({line["shard"] for line in lines if line["shard"] is not None})
    judge = ModelJudge(config.judge) if config.judge else None

    pending_lines: list[dict] = []
    buffer: list[dict] = []

    def commit() -> None:
        nonlocal n_shards
        if buffer:
            store.write_shard(n_shards, buffer)
            n_shards += 1
        if pending_lines:
            store.write_chunk(len(chunks), pending_lines)
            chunks.append(list(pending_lines))
            lines.extend(pending_lines)
        buffer.clear()
        pending_lines.clear()

    def finish(batch: list[tuple[dict, dict]]) -> None:
        scored = [(line, payload) for line, payload in batch if "scores" in line]
        judged = judge.judge_many([(ln["sample_hash"], ln["text"], p["members"]) for ln, p in scored]) if judge else []
        judged_by_key = {ln["key"]: j for (ln, _), j in zip(scored, judged)}
        for line, payload in batch:
            if "scores" in line:
                _apply_overrides(line, judged_by_key.get(line["key"]), human.get(line["sample_hash"]))
                # A benchmark match is the first reason: it is why the record must go, whatever its quality.
                contamination = guard.drop_reasons(line) if guard else []
                line["reasons"] = contamination + decide(line["scores"], line["issues"], quality.thresholds)
                if not line["reasons"]:
                    duplicate = dedup.check(line["sample_hash"], line["text_hash"], line["signatures"])
                    if duplicate:
                        line["reasons"] = [duplicate]
                    else:
                        dedup.add(line["sample_hash"], line["text_hash"], line["signatures"])
                        line["shard"] = n_shards
                        buffer.append(_shard_sample(line, payload))
            pending_lines.append(line)
            if len(buffer) == config.shard_size:
                commit()

    remaining = items[len(lines):]
    bar = tqdm(total=len(items), initial=len(lines), desc="curating", unit="rec", disable=not config.progress)
    real_root = None if config.allow_outside_image_root else Path(read.image_root).resolve()
    init_args = (quality, config.image_size, real_root, guard)
    if config.workers == 1:
        _init_worker(*init_args)
        results = map(process_item, remaining)
        pool = None
    else:
        pool = multiprocessing.get_context("fork").Pool(config.workers, _init_worker, init_args)
        results = pool.imap(process_item, remaining, chunksize=8)
    try:
        batch: list[tuple[dict, dict]] = []
        for result in results:
            batch.append(result)
            bar.update(1)
            if len(batch) == JUDGE_BATCH:
                finish(batch)
                batch = []
        finish(batch)
        commit()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    report = _write_outputs(config, quality, store, lines, read.excluded, judge, guard)
    if report.get("judge", {}).get("all_failed"):
        print(_all_failed_warning(report["judge"]), file=sys.stderr)
    return report


def _judge_summary(lines: list[dict], judge: ModelJudge) -> dict:
    """This process's counters, with calls and failures counted from the outcomes of the whole run."""
    calls = sum(len(judge.config.dimensions) for line in lines if "scores" in line)
    failures = sum(len(line.get("judge_failed", ())) for line in lines)
    return {**judge.stats, "calls": calls, "failures": failures, "all_failed": calls > 0 and failures == calls,
            "first_error": judge.first_error}


def _all_failed_warning(summary: dict) -> str:
    first = f"; first error: {summary['first_error']}" if summary["first_error"] else ""
    return (f"WARNING: every model-judge call failed ({summary['failures']} of {summary['calls']}); no sample was "
            f"judged, the judged dimensions keep their rule scores{first}")


def _write_outputs(config: PrepareConfig, quality: QualityConfig, store: ShardStore, lines: list[dict],
                   excluded: int, judge: ModelJudge | None, guard: ContaminationGuard | None) -> dict:
    extra = {"source": config.source or config.format, "format": config.format, "input": config.input,
             "selection": {"split": config.split, "language": config.language}, "excluded": excluded,
             "domain": config.domain, "image_size": config.image_size, "seed": config.seed}
    pairs: dict[str, list[tuple[float, float]]] = {}
    for line in lines:
        for dim, (auto, graded) in line.get("review", {}).items():
            pairs.setdefault(dim, []).append((auto, graded))
    if judge:
        extra["judge"] = _judge_summary(lines, judge)
    if guard:
        extra["contamination"] = guard.summary(lines)
    if pairs:
        extra["review"] = {"agreement": agreement(pairs, quality.thresholds)}
    report = build_report(lines, quality.thresholds, extra)
    write_histograms(lines, quality.thresholds, os.path.join(config.out, "report"))
    atomic_write_bytes(os.path.join(config.out, "quality_report.md"), render_markdown(report).encode())
    if config.review_export:
        report["review_export"] = {"path": config.review_export,
                                   "rows": export_review_csv(lines, config.review_export, config.review_samples,
                                                             config.seed)}
    manifest = build_manifest(lines, store, {"source": extra["source"], "image_size": config.image_size})
    atomic_write_json(os.path.join(config.out, "manifest.json"), manifest)
    atomic_write_json(os.path.join(config.out, "quality_report.json"), report)
    return report


def read_outcomes(out_dir: str) -> list[dict]:
    """Every committed record's outcome of a run (id, key, scores, issues, reasons, shard), in order."""
    return [line for chunk in ShardStore(out_dir)._committed_chunks() for line in chunk]
