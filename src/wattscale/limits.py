"""Bounds on settings, shared by the configuration and the command line; importable without torch."""

from __future__ import annotations

# Integers are stored as SQL BIGINT (64-bit signed), so no setting may exceed this.
MAX_INT64 = 2**63 - 1
# A quadrillion tokens: some 60x the largest published training runs, far below where the token arithmetic
# (tokens x FLOPs per token, stored as a double) loses precision. A larger budget is a typo.
MAX_TRAIN_TOKENS = 10**15
# torch starts this many intra-op threads on the first matmul; more is a typo, not oversubscription.
MAX_THREADS = 1024
