"""`IndexedDataset`: makes every batch carry the dataset row index the values are keyed by."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset


class IndexedDataset(Dataset):
    """Wrap any map-style dataset so each item is ``(row_index, *item)``.

    Args:
        dataset: A map-style dataset (``__getitem__`` and ``__len__``); items may be tuples
            (unpacked after the index) or single objects.
        ids: Optional user ids, one per row, exported next to the row index.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = IndexedDataset(TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 0])), ids=["a", "b", "c"])
        >>> idx, x, y = ds[1]
        >>> idx, tuple(x.shape), int(y), str(ds.ids[1])
        (1, (2,), 1, 'b')
    """

    def __init__(self, dataset: Dataset, ids: Sequence[Any] | None = None) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"`dataset` must be a map-style dataset with __getitem__ and __len__; got {type(dataset).__name__}. "
                "Iterable datasets have no stable row index to value."
            )
        self.dataset = dataset
        n = len(dataset)
        if ids is not None:
            ids = np.asarray(ids)
            if ids.shape[0] != n:
                raise ValueError(
                    f"`ids` has {ids.shape[0]} entries but the dataset has {n} rows; give one id per row."
                )
        self.ids = ids

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if isinstance(item, tuple):
            return (index, *item)
        if isinstance(item, list):
            return [index, *item]
        return index, item
