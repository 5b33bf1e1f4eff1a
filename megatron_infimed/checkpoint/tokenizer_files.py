"""The tokenizer files a checkpoint or an export may carry: an allowlist, never a whole folder.

A ``--tokenizer`` folder is often a model folder (a Qwen3 download holds ``config.json``, weight
index files, sometimes a ``.env``). Copying it wholesale put another model's ``config.json`` into our
exports and secrets into every checkpoint, so only the files a tokenizer is made of are copied:

| kept                                                        | why                             |
|-------------------------------------------------------------|---------------------------------|
| ``tokenizer.json``, ``tokenizer_config.json``               | Hugging Face ``tokenizers``     |
| ``vocab.json``, ``merges.txt``, ``added_tokens.json``,      | slow/BPE tokenizers and their   |
| ``special_tokens_map.json``, ``chat_template.jinja``        | special tokens                  |
| ``*.model`` (one SentencePiece model)                       | our SentencePiece tokenizers    |
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")


def tokenizer_files(source: str | Path) -> list[Path]:
    """The allowlisted files of a tokenizer folder, or ``[source]`` for a single ``*.model`` or
    ``tokenizer.json`` file. Anything else in the folder is left where it is."""
    source = Path(source)
    if source.is_file():
        if source.suffix == ".model" or source.name in TOKENIZER_FILES:
            return [source]
        raise ValueError(f"tokenizer file {source} is neither a SentencePiece *.model nor one of "
                         f"{list(TOKENIZER_FILES)}")
    if not source.is_dir():
        raise FileNotFoundError(f"tokenizer {source} does not exist")
    named = [source / name for name in TOKENIZER_FILES if (source / name).is_file()]
    return named + sorted(p for p in source.glob("*.model") if p.is_file())


def copy_tokenizer(source: str | Path, target: str | Path, skip: tuple[str, ...] = (),
                   protect: bool = False) -> list[str]:
    """Copy ``tokenizer_files(source)`` into ``target`` (made if missing) and return their names.

    ``skip`` names files not to copy. With ``protect``, a file that already exists in ``target``
    is an error rather than being overwritten: an export's own files are never replaced by a
    tokenizer folder's.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for file in tokenizer_files(source):
        if file.name in skip:
            continue
        destination = target / file.name
        if protect and destination.exists():
            raise FileExistsError(f"tokenizer file {file} would overwrite {destination}, which this "
                                  f"export wrote itself")
        shutil.copy2(file, destination)
        copied.append(file.name)
    return copied
