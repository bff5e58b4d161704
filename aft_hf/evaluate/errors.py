"""The evaluation error, in a module of its own so that every evaluate module can raise it without an
import cycle (:mod:`aft_hf.evaluate.base` imports :mod:`aft_hf.evaluate.zeroshot`)."""

from __future__ import annotations

from ..errors import AftError


class EvaluationError(AftError, ValueError):
    """Bad evaluation settings or data (unknown metric, missing or malformed masks, labels, boxes, ...)."""


__all__ = ["EvaluationError"]
