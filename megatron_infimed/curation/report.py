"""quality_report.json, quality_report.md and one histogram PNG per dimension.

Counting rule: every selected input record is exactly one line of the run's progress, and each
line is either kept or dropped under its *first* reason, so ``total == kept + sum(dropped)``
holds by construction (``check_counts`` asserts it anyway). ``reasons_all`` counts every reason
of every dropped sample, for when one sample fails several dimensions.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from megatron_infimed.curation.quality import DIMENSIONS

HISTOGRAM_BINS = 10


def _stats(values: list[float], threshold: float | None) -> dict:
    if not values:
        return {"scored": 0, "threshold": threshold}
    arr = np.asarray(values, dtype=np.float64)
    counts, edges = np.histogram(arr, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    return {
        "scored": len(values),
        "threshold": threshold,
        "mean": round(float(arr.mean()), 4),
        "std": round(float(arr.std()), 4),
        "min": round(float(arr.min()), 4),
        "p05": round(float(np.percentile(arr, 5)), 4),
        "p50": round(float(np.percentile(arr, 50)), 4),
        "p95": round(float(np.percentile(arr, 95)), 4),
        "max": round(float(arr.max()), 4),
        "below_threshold": int((arr < threshold).sum()) if threshold is not None else 0,
        "histogram": {"edges": [round(float(e), 2) for e in edges], "counts": counts.tolist()},
    }


def check_counts(report: dict) -> None:
    dropped = sum(report["dropped"].values())
    if report["total"] != report["kept"] + dropped:
        raise AssertionError(f"report counts do not reconcile: total {report['total']} != kept {report['kept']} "
                             f"+ dropped {dropped}")


def build_report(lines: list[dict], thresholds: dict, extra: dict) -> dict:
    kept = sum(1 for line in lines if not line["reasons"])
    dropped = Counter(line["reasons"][0] for line in lines if line["reasons"])
    every = Counter(reason for line in lines for reason in line["reasons"])
    report = {
        "version": 1,
        **extra,
        "total": len(lines),
        "kept": kept,
        "dropped": dict(sorted(dropped.items())),
        "reasons_all": dict(sorted(every.items())),
        "dimensions": {dim: _stats([line["scores"][dim] for line in lines if dim in line.get("scores", {})],
                                   thresholds.get(dim)) for dim in DIMENSIONS},
    }
    check_counts(report)
    return report


def write_histograms(lines: list[dict], thresholds: dict, out_dir: str) -> list[str]:
    """report/hist_<dimension>.png: one small figure reused for all five (drawing dominates the cost)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    os.makedirs(out_dir, exist_ok=True)
    fig = Figure(figsize=(4.5, 2.8), dpi=72)
    fig.subplots_adjust(left=0.15, right=0.97, top=0.88, bottom=0.18)
    ax = fig.add_subplot()
    paths = []
    for dim in DIMENSIONS:
        values = [line["scores"][dim] for line in lines if dim in line.get("scores", {})]
        ax.clear()
        ax.hist(values, bins=HISTOGRAM_BINS, range=(0.0, 1.0), color="#4a7ab0", edgecolor="white")
        if thresholds.get(dim) is not None:
            ax.axvline(thresholds[dim], color="#c0392b", linestyle="--", label=f"threshold {thresholds[dim]}")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_title(f"{dim} (n={len(values)})", fontsize=10)
        ax.set_xlabel("score", fontsize=9)
        ax.set_ylabel("samples", fontsize=9)
        path = os.path.join(out_dir, f"hist_{dim}.png")
        fig.savefig(path, metadata={"Software": None})
        paths.append(path)
    return paths


def render_markdown(report: dict) -> str:
    rows = [f"# Quality report: {report.get('source', '')}", "",
            f"- total records: **{report['total']}**", f"- kept: **{report['kept']}**",
            f"- dropped: **{sum(report['dropped'].values())}**", ""]
    if report.get("excluded"):
        rows += [f"Excluded before counting by the selection ({report.get('selection')}): {report['excluded']}", ""]
    rows += ["## Dropped, by first reason", "", "| reason | samples |", "|---|---|"]
    rows += [f"| {reason} | {count} |" for reason, count in report["dropped"].items()] or ["| (none) | 0 |"]
    rows += ["", "## Scores per dimension", "", "| dimension | scored | threshold | mean | p05 | p50 | below |",
             "|---|---|---|---|---|---|---|"]
    for dim, s in report["dimensions"].items():
        rows.append(f"| {dim} | {s['scored']} | {s['threshold']} | {s.get('mean', '-')} | {s.get('p05', '-')} | "
                    f"{s.get('p50', '-')} | {s.get('below_threshold', '-')} |")
    rows += ["", *[f"![{dim}](report/hist_{dim}.png)" for dim in DIMENSIONS]]
    if report.get("judge"):
        rows += ["", "## Model judge", ""]
        if report["judge"]["all_failed"]:
            rows += ["**Every judge call failed: the judged dimensions hold rule scores only.**", ""]
        rows += [f"- {k}: {v}" for k, v in report["judge"].items()]
    if report.get("contamination"):
        rows += ["", "## Benchmark contamination", "",
                 "| benchmark | items | images | records checked | same image and question | same image only | "
                 "dropped | flagged | max Hamming |", "|---|---|---|---|---|---|---|---|---|"]
        for bench, c in report["contamination"].items():
            rows.append(f"| {bench} | {c['benchmark']['items']} | {c['benchmark']['images']} | {c['checked']} | "
                        f"{c['same_image_and_question']} | {c['same_image']} | {c['dropped']} | {c['flagged']} | "
                        f"{c['max_hamming']} |")
        for bench, c in report["contamination"].items():
            unreadable = c["benchmark"]["unreadable_images"]
            if unreadable:
                rows.append(f"\n{bench}: {len(unreadable)} benchmark image(s) could not be read, so were not "
                            f"checked: {', '.join(sorted(unreadable)[:5])}")
    if report.get("review"):
        rows += ["", "## Clinician review agreement", "", "| dimension | graded | agreement | kappa | mean abs diff |",
                 "|---|---|---|---|---|"]
        for dim, a in report["review"]["agreement"].items():
            rows.append(f"| {dim} | {a['graded']} | {a['agreement']} | {a['kappa']} | {a['mean_abs_diff']} |")
    return "\n".join(rows) + "\n"
