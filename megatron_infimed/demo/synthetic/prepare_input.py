"""``infimed-prepare --format synthetic``: the generator writes LLaVA records, curation reads them as
``--format llava``. Curation itself knows no synthetic format; this is the whole of the glue::

    infimed-prepare --format synthetic --distribution medical --synthetic-n 2000 --out runs/syn
    = generate_synthetic("runs/syn/source", 2000, "medical", seed)
      → prepare(format="llava", input="runs/syn/source/medical_train.json",
                image_root="runs/syn/source", source="synthetic-medical")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from megatron_infimed.curation.pipeline import PrepareConfig
from megatron_infimed.demo.synthetic import generate_synthetic


@dataclass(frozen=True, kw_only=True, slots=True)
class SyntheticSpec:
    """What to generate (``--synthetic-n``, ``--distribution``, ``--defect-rate``, ...)."""

    n: int = 1000
    distribution: str = "medical"  # "general" | "medical" | "shifted"
    defect_rate: float = 0.0
    image_size: int = 128
    split: str = "train"


def generate_llava_input(config: PrepareConfig, spec: SyntheticSpec) -> PrepareConfig:
    """Generate ``spec`` into ``OUT/source/`` (seeded by ``config.seed``) and return ``config`` reading it
    as llava. The source name defaults to ``synthetic-<distribution>``; the general distribution is
    curated with ``domain="general"`` (medical relevance is scored but never drops)."""
    data = generate_synthetic(os.path.join(config.out, "source"), spec.n, spec.distribution, config.seed,
                              image_size=spec.image_size, defect_rate=spec.defect_rate, split=spec.split)
    domain = "general" if spec.distribution == "general" else config.domain
    return replace(config, format="llava", input=data.json_path, image_root=data.image_root,
                   source=config.source or f"synthetic-{spec.distribution}", domain=domain)
