"""Data curation: ingest medical multimodal records, score five quality dimensions, deduplicate,
and write WebDataset shards with a manifest and a quality report (``infimed-prepare``).

Public API::

    prepare(PrepareConfig(format=..., input=..., out=...)) -> quality report dict
    generate_synthetic(out_dir, n, distribution, seed, ...) -> SyntheticDataset
    read_outcomes(out_dir) -> per-record scores and decisions of a run
"""

from megatron_infimed.curation.pipeline import PrepareConfig, SyntheticSpec, prepare, read_outcomes
from megatron_infimed.curation.synthetic import SyntheticDataset, generate_synthetic

__all__ = ["PrepareConfig", "SyntheticSpec", "prepare", "read_outcomes", "SyntheticDataset", "generate_synthetic"]
