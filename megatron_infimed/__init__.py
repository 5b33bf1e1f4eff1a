"""megatron-infimed: InfiMed-Foundation style medical vision-language model training.

The package follows the data path: curation → data (loading, packing) → model → training →
convert → eval. ``runtime`` starts the distributed world; ``cli`` holds thin entry points.
"""

__version__ = "0.1.0"
