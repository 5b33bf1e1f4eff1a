"""The demo's report: ``report.md``, and ``loss_curve.png`` across the four stages."""

from __future__ import annotations

import json
from pathlib import Path


def _losses(workdir: Path, stages: list[str]) -> list[tuple[str, list[int], list[float]]]:
    curves, offset = [], 0
    for stage in stages:
        path = workdir / "runs" / stage / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        curves.append((stage, [offset + r["iteration"] for r in records], [r["loss"] for r in records]))
        offset += records[-1]["iteration"] if records else 0
    return curves


def plot_losses(workdir: Path, stages: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.5))
    for stage, steps, losses in _losses(workdir, stages):
        axis.plot(steps, losses, marker=".", label=stage)
    axis.set_xlabel("iteration (stages laid end to end)")
    axis.set_ylabel("training loss")
    axis.legend()
    figure.tight_layout()
    path = workdir / "loss_curve.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_report(workdir: Path, results: dict, stages: list[str]) -> Path:
    plot_losses(workdir, stages)
    lines = [
        "# megatron-infimed demo", "",
        f"Finished in {results['seconds']} s. Closed-question accuracy (yes/no, MedEvalKit rule) after each "
        f"stage; the majority-answer baseline of the in-distribution test set is "
        f"{results['majority_closed_accuracy']:.3f}.", "",
        "| stage | in-distribution | shifted |", "|---|---|---|",
    ]
    for stage in stages:
        r = results["stages"][stage]
        lines.append(f"| {stage} | {r['in_distribution']['closed_accuracy']:.3f} "
                     f"(n={r['in_distribution']['n']}) | {r['shifted']['closed_accuracy']:.3f} "
                     f"(n={r['shifted']['n']}) |")
    lines += ["", "## Curation", "", "| distribution | records | kept |", "|---|---|---|"]
    lines += [f"| {name} | {q['total']} | {q['kept']} |" for name, q in results["quality"].items()]
    export = results["export"]
    lines += ["", "## Hugging Face export", "", f"Exported to `{export['folder']}`; transformers answered "
              f"“{export['question']}” with “{export['answer']}” (gold: “{export['gold']}”).", "",
              "![loss curve](loss_curve.png)", ""]
    path = workdir / "report.md"
    path.write_text("\n".join(lines))
    return path
