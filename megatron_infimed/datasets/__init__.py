"""Readers of the medical VQA releases: one module per release, each turning its files into typed rows.

The lowest layer of the data path. Curation (``infimed-prepare``) wraps rows into training records
and evaluation (``infimed-eval``) into scored questions; neither parses a release itself. Nothing
here imports torch, megatron-core or another part of the package.

| release (module) | split decided by                   | selection    | images in       |
|------------------|------------------------------------|--------------|-----------------|
| vqa_rad          | each entry's ``phrase_type``       | ``split``    | ``images/``     |
| slake            | the file (train/validate/test)     | ``language`` | ``imgs/``       |
| pathvqa          | the image name (train_/val_/test_) | none         | beside the file |
| pmc_vqa          | the file (train*.csv / test*.csv)  | none         | ``images/``     |
| omnimedvqa       | always test (evaluation only)      | none         | ``image_root``  |

Decisions both callers live by, and why:

- **A malformed entry is reported, never dropped and never raised mid-file.** ``read`` returns
  every selected entry in file order, each a row or a ``Malformed`` naming the file, the entry, its
  id when readable and what was expected (``entries.py``). Curation counts each as a
  ``parse/<kind>`` drop and goes on, since one bad entry should not stop a corpus; evaluation
  refuses the benchmark, since a score over part of it is not the published number. The policy is
  the caller's reading of the report, so there is one parser. Only a file that cannot be read as
  a whole (not JSON, not a list, missing CSV columns) raises ``ReleaseFileError``.
- **The id and the selection field are checked on every entry; the rest only on selected ones.**
  Where a release has ids (VQA-RAD, SLAKE ``qid``) an entry without one cannot be joined to a
  prediction or traced back; releases without ids use the entry's index. An entry without its
  split or language cannot be placed, so it is reported whatever the selection. An entry the
  selection leaves out is counted as ``excluded`` and not checked further.
- **One split rule per release, next to its parser** (the tables in each module). The only choice
  left to callers is which split to read where a file holds several (VQA-RAD): that reader has no
  default, and curation asks for train, evaluation for test.
- **One image-folder rule** for every release (``files.py``): ``image_root`` when given, else the
  data file's folder, made absolute, or the release's image sub-folder there when it exists.
- **Text that is not UTF-8 stays in its entry** as lone surrogates (``surrogateescape``), so one
  bad byte does not cost the whole file: curation drops that entry by its text-quality rule, as for
  its own formats; evaluation refuses the benchmark, naming the entry and field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from megatron_infimed.datasets import omnimedvqa, pathvqa, pmc_vqa, slake, vqa_rad
from megatron_infimed.datasets.entries import Malformed, ReleaseRead, ReleaseRow
from megatron_infimed.datasets.files import ReleaseFileError


@dataclass(frozen=True, kw_only=True, slots=True)
class Release:
    read: Callable[..., ReleaseRead]  # read(path, *, image_root=None, **selection) -> ReleaseRead
    selection: tuple[str, ...] = ()  # the keywords ``read`` selects entries by


RELEASES: dict[str, Release] = {
    "vqa_rad": Release(read=vqa_rad.read, selection=("split",)),
    "slake": Release(read=slake.read, selection=("language",)),
    "pathvqa": Release(read=pathvqa.read),
    "pmc_vqa": Release(read=pmc_vqa.read),
    "omnimedvqa": Release(read=omnimedvqa.read),
}

__all__ = ["RELEASES", "Malformed", "Release", "ReleaseFileError", "ReleaseRead", "ReleaseRow"]
