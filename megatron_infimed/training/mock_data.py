"""``--mock-data``: deterministic synthetic packed multimodal micro-batches (Megatron's idea).

Micro-batch ``k`` of the run is a pure function of ``(seed, k)``, so every layout (TP, PP, DP)
and every resume sees the same data. Each sample is ``[image tokens] + text`` where the text
follows a learnable rule (each token determines the next), so the loss visibly falls. Packs are
built by the loader's ``build_pack``, so ``--loss-weighting``, CP/FP8 alignment and image
normalisation behave as on real data. Which samples share a pack does not depend on the layout:
each sample reserves its length rounded up to 16 slots (``MOCK_RESERVE``), room for the padding of
any context-parallel size up to 8 and of FP8, so CP=1 and CP=2 runs train on the same samples and
their losses can be compared.
Micro-batch numbering: iteration ``i``, data-parallel rank ``r``, micro-batch ``m`` is
``k = (i × dp + r) × n_micro + m``: the global batch of an iteration is the same set of
micro-batches whatever the data-parallel size. The run so far has therefore consumed exactly the
first ``consumed × dp`` micro-batches, whatever its layout, which is why a resume at another
data-parallel size continues exactly: each new rank's ``consumed`` is that count over the new size.
"""

from __future__ import annotations

import torch

from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.data.pack import IGNORE_INDEX, Pack
from megatron_infimed.data.pack_builder import PackLayout, build_pack
from megatron_infimed.data.preprocess import Sample
from megatron_infimed.model.token_reduction import tokens_per_image

# Slots a mock sample reserves are its length rounded up to this (or to the layout's own sample
# multiple, when context parallelism asks for more).
MOCK_RESERVE = 16


def default_layout(config: ModelConfig) -> PackLayout:
    """Token weighting, no alignment."""
    return PackLayout()


def mock_pack(config: ModelConfig, seq_length: int, seed: int, index: int,
              layout: PackLayout | None = None) -> Pack:
    """One pack of whole samples filling at most ``seq_length`` slots, built by the loader's own
    ``build_pack`` (so loss weighting, CP and FP8 alignment and image normalisation are the real ones)."""
    layout = layout or default_layout(config)
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    vocab = min(config.language.vocab_size, config.image_token_id) - 1
    image_len = tokens_per_image(config)
    size = config.vision.image_size
    capacity = layout.capacity(seq_length)
    reserve = max(MOCK_RESERVE, layout.sample_multiple)
    samples: list[Sample] = []
    used = 0
    while True:
        with_image = bool(torch.randint(0, 2, (1,), generator=g))
        text_len = int(torch.randint(4, max(5, seq_length // 3), (1,), generator=g))
        length = text_len + (image_len if with_image else 0)
        reserved = -(-length // reserve) * reserve
        if used + reserved > capacity:
            break
        start = int(torch.randint(0, vocab, (1,), generator=g))
        step = int(torch.randint(1, 7, (1,), generator=g))
        text = (start + step * torch.arange(text_len)) % vocab
        ids = torch.cat([torch.full((image_len,), config.image_token_id), text]) if with_image else text
        labels = torch.full((length,), IGNORE_INDEX)
        labels[-text_len:-1] = text[1:]
        pixels = (torch.randint(0, 256, (1, 3, size, size), generator=g, dtype=torch.uint8) if with_image
                  else torch.zeros(0, 3, size, size, dtype=torch.uint8))
        samples.append(Sample(f"mock-{seed}-{index}-{len(samples)}", "mock", ids.long(), labels.long(), pixels))
        used += reserved
    if not samples:
        raise ValueError(f"--seq-length {seq_length} is too short for one mock sample")
    return build_pack(samples, layout)


class MockDataIterator:
    """Micro-batches for one data-parallel rank; ``state_dict`` makes resume exact."""

    def __init__(self, config: ModelConfig, seq_length: int, micro_batch_size: int, seed: int,
                 dp_rank: int, dp_size: int, num_microbatches: int, reset: bool = False,
                 layout: PackLayout | None = None):
        self.config, self.seq_length, self.micro_batch_size = config, seq_length, micro_batch_size
        self.layout = layout or default_layout(config)
        self.seed, self.dp_rank, self.dp_size, self.num_microbatches = seed, dp_rank, dp_size, num_microbatches
        self.reset = reset  # on a layout change, restart the stream instead of refusing
        self.consumed = 0  # micro-batches this rank has taken

    def __iter__(self):
        return self

    def __next__(self) -> Pack:
        iteration, micro = divmod(self.consumed, self.num_microbatches)
        k = (iteration * self.dp_size + self.dp_rank) * self.num_microbatches + micro
        self.consumed += 1
        packs = [mock_pack(self.config, self.seq_length, self.seed, k * self.micro_batch_size + j, self.layout)
                 for j in range(self.micro_batch_size)]
        return Pack.concat([p.padded_to(self.seq_length, pad_id=self.layout.pad_id) for p in packs])

    def state_dict(self) -> dict:
        return {"kind": "mock", "consumed": self.consumed, "dp_size": self.dp_size, "dp_rank": self.dp_rank,
                "micro_batch_size": self.micro_batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Any saved rank's state (they all consumed as many): at another data-parallel size the run
        continues at the first pack the saved run had not consumed, unless ``reset`` restarts it."""
        if state.get("kind") != "mock":
            if self.reset:
                return
            raise ValueError("the checkpoint's data state is the shard loader's, not --mock-data's; pass "
                             "--reset-data-state to start the mock data afresh")
        saved_dp, saved_mbs = int(state["dp_size"]), int(state.get("micro_batch_size", self.micro_batch_size))
        if saved_dp == self.dp_size and saved_mbs == self.micro_batch_size:
            self.consumed = int(state["consumed"])
            return
        if self.reset:
            return
        packs = int(state["consumed"]) * saved_dp * saved_mbs  # every rank's, hence the first ones
        per_rank = self.dp_size * self.micro_batch_size
        if packs % (per_rank * self.num_microbatches):
            raise ValueError(f"mock data state: the saved run consumed {packs} packs (data-parallel size {saved_dp}, "
                             f"micro-batch size {saved_mbs}), not a whole number of this run's global batches of "
                             f"{per_rank * self.num_microbatches} packs (data-parallel size {self.dp_size} x "
                             f"{self.num_microbatches} micro-batches x {self.micro_batch_size}); keep the global "
                             f"batch size, or pass --reset-data-state")
        self.consumed = packs // per_rank

    def stats(self) -> dict:
        return {"skipped": 0}
