"""Shard store: deterministic WebDataset tars, atomic commits, resumable progress.

Layout under OUT::

    shards/shard-000000.tar        committed shards (webdataset TarWriter, see the shard contract)
    shards/.shard-000001.tar.partial   a shard being written (never matches shard-*.tar)
    progress/run.json              the settings this OUT belongs to (a resume must match them)
    progress/chunk-000000.jsonl    one line per processed record since the previous commit

Commit order is tar first, then its chunk file, each via temp file + ``os.replace``. The chunk is
the commit marker: on resume only the contiguous committed chunks count, any shard or temp file
beyond them is removed and rebuilt, so a half-written shard never looks complete.

Byte-identical tars: members in key order with mtime 0, uid/gid 0, fixed user/group names and
mode 0444 (TarWriter's ``mtime``/``user``/``group``/``mode``), JSON with sorted keys.
"""

from __future__ import annotations

import glob
import json
import os
import re

from webdataset import TarWriter

_CHUNK = re.compile(r"chunk-(\d{6})\.jsonl$")


def atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=True) + "\n").encode())


def shard_json_bytes(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class ShardStore:
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.shards_dir = os.path.join(out_dir, "shards")
        self.progress_dir = os.path.join(out_dir, "progress")

    def shard_name(self, index: int) -> str:
        return f"shards/shard-{index:06d}.tar"

    def chunk_path(self, index: int) -> str:
        return os.path.join(self.progress_dir, f"chunk-{index:06d}.jsonl")

    def open_run(self, fingerprint: dict, *, overwrite: bool) -> list[list[dict]]:
        """Prepare OUT for this run; returns the committed chunks of an earlier, matching run.

        Raises ValueError when OUT holds a run with other settings and ``overwrite`` is False.
        """
        run_path = os.path.join(self.progress_dir, "run.json")
        if os.path.exists(run_path) and not overwrite:
            with open(run_path, encoding="utf-8") as f:
                previous = json.load(f)
            if previous != fingerprint:
                changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
                raise ValueError(f"{self.out_dir} holds a run with other settings ({', '.join(changed)}); "
                                 "pass --overwrite or choose another --out")
        elif overwrite:
            for path in glob.glob(os.path.join(self.shards_dir, "*")) + glob.glob(os.path.join(self.progress_dir, "*")):
                os.remove(path)
        os.makedirs(self.shards_dir, exist_ok=True)
        os.makedirs(self.progress_dir, exist_ok=True)
        atomic_write_json(run_path, fingerprint)
        chunks = self._committed_chunks()
        self._remove_uncommitted(chunks)
        return chunks

    def _committed_chunks(self) -> list[list[dict]]:
        chunks = []
        while os.path.exists(self.chunk_path(len(chunks))):
            with open(self.chunk_path(len(chunks)), encoding="utf-8") as f:
                chunks.append([json.loads(line) for line in f if line.strip()])
        return chunks

    def _remove_uncommitted(self, chunks: list[list[dict]]) -> None:
        committed_shards = {line["shard"] for chunk in chunks for line in chunk if line.get("shard") is not None}
        committed_names = {os.path.basename(self.shard_name(i)) for i in committed_shards}
        for path in glob.glob(os.path.join(self.shards_dir, "*")) + glob.glob(os.path.join(self.shards_dir, ".*")):
            if os.path.basename(path) not in committed_names:
                os.remove(path)
        for path in glob.glob(os.path.join(self.progress_dir, "*")) + glob.glob(os.path.join(self.progress_dir, ".*")):
            match = _CHUNK.search(path)
            if path.endswith(".partial") or (match and int(match.group(1)) >= len(chunks)):
                os.remove(path)

    def write_shard(self, index: int, samples: list[dict]) -> None:
        """samples: {"__key__": str, "json": bytes, <ext>: bytes, ...}, written in the given order."""
        final = os.path.join(self.out_dir, self.shard_name(index))
        tmp = os.path.join(self.shards_dir, f".{os.path.basename(final)}.partial")
        with open(tmp, "wb") as stream:
            writer = TarWriter(stream, user="infimed", group="infimed", mode=0o444, mtime=0, encoder=False)
            try:
                for sample in samples:
                    writer.write(sample)
            finally:
                writer.close()  # also on interruption: the .partial file is removed on resume
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, final)

    def write_chunk(self, index: int, lines: list[dict]) -> None:
        text = "".join(json.dumps(line, sort_keys=True, ensure_ascii=True) + "\n" for line in lines)
        atomic_write_bytes(self.chunk_path(index), text.encode())


def build_manifest(lines: list[dict], store: ShardStore, extra: dict) -> dict:
    """manifest.json from the committed lines of kept samples (the shard contract)."""
    kept = [line for line in lines if line.get("shard") is not None]
    counts: dict[int, int] = {}
    for line in kept:
        counts[line["shard"]] = counts.get(line["shard"], 0) + 1
    return {
        "version": 1,
        **extra,
        "shards": [{"path": store.shard_name(i), "samples": counts[i]} for i in sorted(counts)],
        "total_samples": len(kept),
        "samples": [{"key": line["key"], "shard": line["shard"], "text_chars": line["text_chars"],
                     "images": line["images"], "text_tokens_estimate": line["text_tokens_estimate"]}
                    for line in kept],
    }
