"""From bucket keys to candidate pairs to clusters, on flat numpy arrays.

Units (documents or repositories) are numbered in preference order (0 = the one to keep first), so
the survivor of a cluster is simply its smallest unit number, whatever order the input came in.
"""

from __future__ import annotations

import numpy as np

#: Buckets up to this size yield all their pairs; larger ones (templated files) link every member to
#: the bucket's most preferred unit only, keeping candidate pairs linear in the bucket size.
ALL_PAIRS_MAX_BUCKET = 64

#: An empty (0, 2) pair array.
NO_PAIRS = np.empty((0, 2), dtype=np.int64)


def bucket_pairs(keys: np.ndarray, units: np.ndarray, all_pairs_max_bucket: int) -> np.ndarray:
    """(k, 2) int64 pairs ``(u, v)``, ``u < v``, of units sharing a key.

    ``keys`` is (n,) or (n, width): rows that are equal form a bucket. Buckets of up to
    ``all_pairs_max_bucket`` units yield every pair; larger buckets pair each member with the smallest.
    """
    if len(units) < 2:
        return NO_PAIRS
    keys = keys.reshape(len(units), -1)
    order = np.lexsort((units, *keys.T[::-1]))
    sorted_keys, sorted_units = keys[order], units[order].astype(np.int64)
    starts = np.flatnonzero(np.r_[True, np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)])
    sizes = np.diff(np.r_[starts, len(units)])
    pairs = []
    for size in np.unique(sizes[(sizes >= 2) & (sizes <= all_pairs_max_bucket)]):
        members = sorted_units[starts[sizes == size][:, None] + np.arange(size)]
        first, second = np.triu_indices(size, 1)
        pairs.append(np.stack([members[:, first].ravel(), members[:, second].ravel()], axis=1))
    large = sizes > all_pairs_max_bucket
    if large.any():
        bucket_of = np.repeat(np.arange(len(starts)), sizes)
        followers = np.flatnonzero(large[bucket_of] & (np.arange(len(units)) != starts[bucket_of]))
        pairs.append(np.stack([sorted_units[starts[bucket_of[followers]]], sorted_units[followers]], axis=1))
    return np.concatenate(pairs) if pairs else NO_PAIRS


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Distinct pairs, sorted."""
    if len(pairs) == 0:
        return NO_PAIRS
    return np.unique(pairs, axis=0)


def connected_components(n_units: int, pairs: np.ndarray) -> np.ndarray:
    """Root of every unit's component: the smallest unit number in it (array-based union-find).

    Each round hooks the larger root of every edge under the smaller one, then compresses paths
    by pointer jumping until each unit points at its root. Rounds repeat until no edge spans two roots.
    """
    parent = np.arange(n_units, dtype=np.int64)
    if len(pairs) == 0:
        return parent
    left, right = pairs[:, 0], pairs[:, 1]
    while True:
        root_left, root_right = parent[left], parent[right]
        spanning = root_left != root_right
        if not spanning.any():
            return parent
        low = np.minimum(root_left[spanning], root_right[spanning])
        high = np.maximum(root_left[spanning], root_right[spanning])
        np.minimum.at(parent, high, low)
        while True:
            grandparent = parent[parent]
            if np.array_equal(grandparent, parent):
                break
            parent = grandparent
