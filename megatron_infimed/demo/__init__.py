"""The end-to-end demo: synthetic data → curation → tokenizer → four training stages →
evaluation after each stage → Hugging Face export, all on the CPU (``infimed-demo``).

``synthetic/`` generates the data (also behind ``infimed-prepare --format synthetic``); ``data``
curates it into shards and test sets; ``run`` drives the stages; ``report`` writes the results."""
