"""Evaluation: benchmark readers -> per-question scoring -> results.json / results.md.

``benchmarks`` reads a release file into ``Question``s; ``scoring`` holds the per-question rules;
``report`` aggregates and writes; ``runner`` ties them together for ``infimed-eval run`` (with an
``answer_fn``, see ``generation``) and ``infimed-eval score`` (with a predictions file).
The scoring rules, with examples: docs/evaluation.md.
"""
