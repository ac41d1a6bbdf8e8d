"""How a statistical test says it cannot be computed on the data, instead of raising a numerical error.

`computing` wraps a test's numerics: a singular matrix, a division by zero, a pingouin input assertion or any
ValueError inside it becomes `NotComputable` naming the test and the cause; `require_finite` does the same for a
statistic that came out NaN or infinite. `NotComputable` is a `ConfigError`, so the callers that already list a
test's ConfigError under ``not_computable`` (`wattscale.analysis.comparisons.compare_metric`, the dynamics, the
returns on tokens) report it with its reason and go on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from wattscale.errors import ConfigError

# What a test's numerics raise on data it cannot handle (singular matrices, zero variance, too few rows): numpy's
# LinAlgError is a ValueError; pingouin checks its input with assert.
_NUMERICAL_ERRORS = (ArithmeticError, ValueError, AssertionError, IndexError, KeyError)


class NotComputable(ConfigError):
    """A test that cannot be computed on these data; callers list it under ``not_computable`` with the reason."""


@contextmanager
def computing(test: str) -> Iterator[None]:
    """Turn a numerical failure inside ``test`` into `NotComputable` naming the test and the cause."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # divide-by-zero and NaN warnings: checked as results
            yield
    except ConfigError:
        raise
    except _NUMERICAL_ERRORS as exc:
        cause = (str(exc).splitlines() or [""])[0] or type(exc).__name__
        raise NotComputable(f"{test} not computable on these data ({type(exc).__name__}: {cause})") from None


def require_finite(test: str, **values: float) -> None:
    """Raise `NotComputable` when a statistic came out NaN or infinite (e.g. zero variance in a cell)."""
    bad = [name for name, v in values.items() if not math.isfinite(float(v))]
    if bad:
        raise NotComputable(f"{test} not computable on these data: {', '.join(bad)} came out "
                            f"{'/'.join(sorted({str(float(values[b])) for b in bad}))} (e.g. no variance to test)")
