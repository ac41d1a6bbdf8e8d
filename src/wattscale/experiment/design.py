"""The order in which the runs of a repeated-measures study execute.

Each repetition is a block holding every condition once. Running conditions in the same order in
every block would confound the condition with the machine's drift over time (thermals, other
tenants, a slowly warming room), so the order within each block is set by a design and a recorded
seed:

- ``random-blocks``: an independent random permutation per block (a randomised complete block
  design), from ``numpy.random.default_rng([seed, block])``;
- ``williams``: a Williams design, the balanced Latin square of Williams (1949): over a full cycle
  of blocks (n for an even number of conditions n, 2n for an odd one) every condition takes every
  position equally often and follows every other condition equally often (first-order carry-over
  balance). The rows are dealt to blocks in a seeded random order, with seeded condition labels;
- ``as-written``: the grid's order in every block (for studies where order does not matter).
"""

from __future__ import annotations

import numpy as np

from wattscale.errors import ConfigError


def williams_rows(n: int) -> list[list[int]]:
    """The rows of a Williams design for n conditions: n rows when n is even, 2n when odd."""
    first, low, high = [0], 1, n - 1
    while len(first) < n:  # 0, 1, n-1, 2, n-2, ...
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[(c + shift) % n for c in first] for shift in range(n)]
    if n % 2:
        rows += [row[::-1] for row in rows]
    return rows


def block_orders(n_conditions: int, n_blocks: int, design: str, seed: int) -> list[list[int]]:
    """For every block, the condition indices in the order they run."""
    if n_conditions < 1 or n_blocks < 1:
        raise ValueError(f"need at least one condition and one block, got {n_conditions}, {n_blocks}")
    if design == "as-written":
        return [list(range(n_conditions)) for _ in range(n_blocks)]
    if design == "random-blocks":
        return [[int(i) for i in np.random.default_rng([seed, block]).permutation(n_conditions)]
                for block in range(n_blocks)]
    if design == "williams":
        rng = np.random.default_rng([seed, 1 << 20])
        labels = rng.permutation(n_conditions)
        rows = williams_rows(n_conditions)
        orders: list[list[int]] = []
        while len(orders) < n_blocks:  # whole cycles of the square, each dealt in a fresh random order
            orders += [[int(labels[c]) for c in rows[i]] for i in rng.permutation(len(rows))]
        return orders[:n_blocks]
    raise ConfigError(f"experiment.order: unknown order {design!r}; choose random-blocks, williams or as-written")
