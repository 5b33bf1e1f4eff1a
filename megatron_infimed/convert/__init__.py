"""Checkpoint conversion, Hugging Face ⇄ megatron-core (``infimed-convert``; see docs/conversion.md).

``mapping`` is the parameter table; ``import_hf`` / ``export_hf`` are the two directions;
``safetensors_folder`` and ``dist_reader`` read the two formats lazily; ``hf_config`` maps configs;
``hf_files/`` holds the remote-code files copied into full exports.
"""
