"""Data loading: shards → samples → packs (docs/architecture.md shows the path of the data).

| module              | what it holds                                                      |
|---------------------|--------------------------------------------------------------------|
| conversation_format | ``<image>`` and the LLaVA speakers (torch-free; curation uses it)  |
| tokenizer           | ``load_tokenizer``, the two backends, ``train_sentencepiece``      |
| chat_template       | the one chat template (training, evaluation, exported Jinja)       |
| images              | ``ImagePreprocessor``: decode, RGB, pad/crop, normalise            |
| preprocess          | shard sample → ``Sample``; overlong truncate/drop                  |
| packing             | ``OnlinePacker`` (bounded-buffer BFD/FFD)                          |
| pack_builder        | samples → ``Pack``: loss weights, FP8/CP padding, no-packing batch |
| streaming           | shards → per-stream sample sequences, exactly once per epoch       |
| blending            | per-worker blend of datasets + preprocessing                       |
| dry_spell           | when a stream gives up; ``NoUsableSamples``                        |
| loader              | ``DataConfig``, ``build_train_loader`` → ``TrainLoader``           |
"""
