"""Strict JSON for command output: what any parser accepts, whatever the numbers."""

from __future__ import annotations

import json
import math
from typing import Any


def strict_json(data: Any) -> str:
    """JSON that any parser accepts: non-finite floats (an infinite perplexity) become null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(data), default=str, allow_nan=False)
