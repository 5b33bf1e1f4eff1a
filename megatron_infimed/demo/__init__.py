"""The end-to-end demo: synthetic data → curation → tokenizer → four training stages →
evaluation after each stage → Hugging Face export, all on the CPU (``infimed-demo``)."""
