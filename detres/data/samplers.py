"""Samplers: an infinite sharded training stream, aspect-ratio grouped batches, and an inference sampler.

The training stream is a pure function of (seed, rank, world_size): epoch e is the permutation
drawn from (seed, e), rank r takes positions r, r + world_size, ... of it, so the ranks' shards of
an epoch are disjoint and cover the dataset. Batches carry a per-sample seed (seed, rank, k) with
k the sample's position in the rank's stream, so random transforms are reproducible and a restart
at iteration i replays batches 0..i-1 as index lists only (no decoding).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

#: what the training batch sampler yields per sample: (dataset index, rng seed entropy).
SeededIndex = tuple[int, tuple[int, int, int]]


class TrainingSampler(Sampler[int]):
    """Infinite stream of dataset indices for one rank (a disjoint shard of every epoch)."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True) -> None:
        if size <= 0:
            raise ValueError("TrainingSampler: the dataset is empty (after filtering images without boxes?).")
        if not 0 <= rank < world_size:
            raise ValueError(f"TrainingSampler: rank {rank} outside 0..{world_size - 1}")
        self.size, self.rank, self.world_size, self.seed, self.shuffle = size, rank, world_size, seed, shuffle

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's indices of epoch ``epoch``, in order."""
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.size) if self.shuffle
                 else np.arange(self.size))
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        epoch = 0
        while True:
            yield from self.epoch_indices(epoch).tolist()
            epoch += 1


class GroupedBatchSampler:
    """Infinite batches of ``batch_size`` seeded indices from a TrainingSampler.

    With ``group_ids`` (e.g. 0 for landscape, 1 for portrait images) a batch only holds images of
    one group, which cuts padding (detectron2's aspect-ratio grouping); None: plain batching.
    ``start_iter`` skips that many batches deterministically without touching the images.
    """

    def __init__(self, sampler: TrainingSampler, batch_size: int, group_ids: Sequence[int] | None = None,
                 start_iter: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size per rank must be >= 1, got {batch_size}")
        self.sampler, self.batch_size, self.start_iter = sampler, batch_size, start_iter
        self.group_ids = None if group_ids is None else np.asarray(group_ids, np.int64)

    def _batches(self) -> Iterator[list[SeededIndex]]:
        buckets: dict[int, list[SeededIndex]] = {}
        s = self.sampler
        for k, idx in enumerate(s):
            g = 0 if self.group_ids is None else int(self.group_ids[idx])
            bucket = buckets.setdefault(g, [])
            bucket.append((idx, (s.seed, s.rank, k)))
            if len(bucket) == self.batch_size:
                yield bucket
                buckets[g] = []

    def __iter__(self) -> Iterator[list[SeededIndex]]:
        it = self._batches()
        for _ in range(self.start_iter):
            next(it)
        yield from it


class InferenceSampler(Sampler[int]):
    """Each index exactly once across ranks, in order: rank r gets one contiguous chunk."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1) -> None:
        shard = [size // world_size + int(r < size % world_size) for r in range(world_size)]
        begin = sum(shard[:rank])
        self.indices = range(begin, begin + shard[rank])

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
