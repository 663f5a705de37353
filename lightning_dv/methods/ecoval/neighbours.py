"""EcoVal's intrinsic term: agreement of a point's label with its nearest distinct neighbours."""

from __future__ import annotations

import torch
from torch import Tensor


def neighbour_agreement(
    ref_x: Tensor, ref_y: Tensor, x: Tensor, y: Tensor, n_neighbors: int = 10, chunk: int = 1024
) -> Tensor:
    """Share of a point's nearest DISTINCT reference points, other than itself, sharing its label.

    Reference rows that repeat (same features and label) count once, and reference points
    identical to the query (Euclidean distance exactly 0) are excluded. Hence copies of a point
    are no evidence for it, and a point valued against a reference set that contains it gets the
    same answer as a copy of it would.

    Args:
        ref_x: Reference features, ``(R, d)``.
        ref_y: Reference labels, ``(R,)``.
        x: Query features, ``(n, d)``.
        y: Query labels, ``(n,)``.
        n_neighbors: Neighbourhood size (capped at the number of distinct reference points - 1).
        chunk: Queries per distance block (bounds memory at ``chunk * R``).

    Returns:
        Agreement in [0, 1], shape ``(n,)``.

    Example:
        >>> ref = torch.tensor([[0.0], [0.1], [0.2], [5.0]])
        >>> neighbour_agreement(ref, torch.tensor([0, 0, 1, 1]), ref[:1], torch.tensor([0]), 2).tolist()
        [0.5]
    """
    joint = torch.cat([ref_x.double(), ref_y.double()[:, None]], dim=1)
    uniq = torch.unique(joint, dim=0)
    ux, uy = uniq[:, :-1], uniq[:, -1].long()
    k = min(n_neighbors, uniq.shape[0] - 1)
    if k < 1:
        raise ValueError("the intrinsic term needs at least 2 distinct training points.")
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for start in range(0, x.shape[0], chunk):
        q = x[start : start + chunk].double()
        # exact distances (no matrix-product shortcut) so identical points give exactly 0
        d = torch.cdist(q, ux, compute_mode="donot_use_mm_for_euclid_dist")
        d = d.masked_fill(d == 0, float("inf"))
        dist, nn_idx = torch.topk(d, k, dim=1, largest=False)
        same = (uy[nn_idx] == y[start : start + chunk, None].long()) & torch.isfinite(dist)
        valid = torch.isfinite(dist).sum(1).clamp_min(1)
        out[start : start + chunk] = same.sum(1) / valid
    return out
