"""Data curation: ingest medical multimodal records, score five quality dimensions, deduplicate,
and write WebDataset shards with a manifest and a quality report (``infimed-prepare``).

Public API::

    prepare(PrepareConfig(format=..., input=..., out=...)) -> quality report dict
    read_outcomes(out_dir) -> per-record scores and decisions of a run
"""

from megatron_infimed.curation.pipeline import PrepareConfig, prepare, read_outcomes

__all__ = ["PrepareConfig", "prepare", "read_outcomes"]
