"""The one owner of the on-disk checkpoint format.

| module            | what it owns                                                           | megatron-core? |
|-------------------|------------------------------------------------------------------------|----------------|
| ``layout``        | folder names, the tracker, resume rules, ``atomic_folder``             | no             |
| ``integrity``     | ``checksums.sha256``: written at save, verified at load and export     | no             |
| ``metadata``      | reading DCP's pickled ``.metadata`` with an allowlist                  | no             |
| ``tokenizer_files`` | which tokenizer files a checkpoint or an export may carry            | no             |
| ``dist``          | saving and loading a run's tensors with ``dist_checkpointing``         | yes            |

Conversion, evaluation and the launch scripts ask these modules; they do not re-derive the rules.
"""
