"""The training sampler: shuffled per epoch across ranks, resumable mid-epoch."""

from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled per epoch from ``seed``) that can start mid-epoch."""

    start_index = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start_index :])

    def __len__(self) -> int:
        return super().__len__() - self.start_index
