"""JSON for results and command output: one result base class, one conversion to plain data, strict JSON text.

- :class:`JsonResult`: the base of every typed analysis result (statistics, study analyses, scaling laws);
  ``to_dict()`` gives its fields as plain JSON-ready data, leaving out those named in ``_hidden``.
- :func:`json_ready`: numpy scalars and arrays -> Python numbers and lists, tuples -> lists, nested results
  -> dicts; dict keys are kept.
- :func:`strict_json`: JSON text that any parser accepts (non-finite floats become null).
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar


def json_ready(value: Any) -> Any:
    """``value`` as plain JSON-ready data: results -> dicts, arrays and tuples -> lists, numpy scalars -> Python."""
    if isinstance(value, JsonResult):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if hasattr(value, "tolist") and hasattr(value, "shape"):  # a numpy array or scalar
        return json_ready(value.tolist())
    if hasattr(value, "item"):
        return value.item()
    return value


class JsonResult:
    """Base of a typed (frozen dataclass) result: ``to_dict()`` is its fields, JSON-ready, less ``_hidden``."""

    _hidden: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready values."""
        return {k: json_ready(v) for k, v in vars(self).items() if k not in self._hidden}


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
