"""Step-based, resumable batch sampling on top of ``DistributedSampler``."""
from __future__ import annotations

from typing import Iterator

from torch.utils.data import DistributedSampler

__all__ = ["StepBatchSampler"]


class _Sized:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class StepBatchSampler:
    """Endless batches of item keys for a dataset of ``length`` items.

    Each epoch is a ``DistributedSampler`` permutation (seeded by ``seed`` and the epoch,
    split across ``world_size`` ranks, ``drop_last``), cut into batches of ``batch_size``.
    A yielded key is ``epoch * length + index``: the dataset reads item ``key % length``
    and seeds its augmentation with ``key``, so epochs differ but a run is reproducible.
    ``start_batch`` skips that many batches without touching the data (resume).
    """

    def __init__(self, length: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, start_batch: int = 0):
        self.length = length
        self.batch_size = batch_size
        self.start_batch = start_batch
        self.sampler = DistributedSampler(_Sized(length), num_replicas=world_size, rank=rank, shuffle=shuffle,
                                          seed=seed, drop_last=True)
        self.per_epoch = len(self.sampler) // batch_size
        if self.per_epoch == 0:
            raise ValueError(
                f"{length} training item(s) cannot fill one batch of {batch_size} on each of {world_size} "
                f"process(es): add data or lower data.batch_size"
            )

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start_batch, self.per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)
            for b in range(offset, self.per_epoch):
                yield [epoch * self.length + i for i in indices[b * self.batch_size : (b + 1) * self.batch_size]]
            epoch, offset = epoch + 1, 0
