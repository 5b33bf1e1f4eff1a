"""Evaluation: benchmark readers -> per-question scoring -> results.json / results.md.

``benchmarks`` turns the rows of a release (read by ``megatron_infimed.datasets``) into
``Question``s; ``scoring`` holds the per-question rules (strict, the default) and ``medevalkit``
MedEvalKit's, for published tables; ``report`` aggregates, with ``bootstrap`` intervals, and writes;
``runner`` ties them together for ``infimed-eval run`` (with an ``answer_fn``, see
``generation``) and ``infimed-eval score`` (with a predictions file).
The scoring rules, with examples: docs/evaluation.md.
"""
