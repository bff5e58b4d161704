"""Object boxes for the localisation metrics: declared layout and units, validated, as pixel corners.

Data sets store boxes in several conventions: corners ``[x0, y0, x1, y1]`` (Pascal VOC, torchvision)
or ``[x, y, w, h]`` (COCO), in pixels of the image or normalised to [0, 1] (YOLO-style exports). Read in
the wrong convention a box silently becomes an empty or 1-pixel mask, so the convention is declared
(``--box-format``, ``--box-units``; default corners in pixels) and every box that cannot be valid in it
(inverted or empty, outside the image, smaller than a pixel) is refused in one line naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .base import EvaluationError

SLACK_PX = 1.0
"""How far (pixels) a box may pass the image border: rounding in a converter, an inclusive end."""


@dataclass(frozen=True)
class BoxFormat:
    """A box layout: its written form and the corners (x0, y0, x1, y1) of a box written in it."""

    layout: str
    corners: Callable[[Sequence[float]], tuple[float, float, float, float]]


BOX_FORMATS: dict[str, BoxFormat] = {
    "xyxy": BoxFormat("[x0, y0, x1, y1]", lambda b: (b[0], b[1], b[2], b[3])),
    "xywh": BoxFormat("[x, y, w, h]", lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3])),
}
BOX_UNITS = ("pixels", "normalised")


def box_layout(fmt: str) -> str:
    return BOX_FORMATS[fmt].layout


def pixel_corners(box: Sequence[float], image_size: tuple[int, int], fmt: str = "xyxy", units: str = "pixels",
                  column: str = "box", where: str = "") -> tuple[float, float, float, float]:
    """The corners of ``box`` in pixels of a ``(width, height)`` image; :class:`EvaluationError` when the box
    cannot be valid in the declared ``fmt`` and ``units``."""
    if fmt not in BOX_FORMATS or units not in BOX_UNITS:
        raise EvaluationError(f"unknown box format '{fmt}' / units '{units}' (formats: {', '.join(BOX_FORMATS)}; "
                              f"units: {', '.join(BOX_UNITS)})")
    w, h = image_size
    x0, y0, x1, y1 = BOX_FORMATS[fmt].corners(box)
    scale_x, scale_y, slack_x, slack_y = (w, h, SLACK_PX / w, SLACK_PX / h) if units == "normalised" \
        else (1, 1, SLACK_PX, SLACK_PX)
    limit_x, limit_y = w / scale_x, h / scale_y
    why = ""
    if x1 <= x0 or y1 <= y0:
        why = ("inverted or empty (x1 <= x0 or y1 <= y0)" if fmt == "xyxy" else "width or height <= 0")
    elif min(x0, y0) < -max(slack_x, slack_y) or x1 > limit_x + slack_x or y1 > limit_y + slack_y:
        why = (f"outside the image ({'[0, 1]' if units == 'normalised' else f'{w}x{h} pixels'})"
               + ("; a corner box read as [x, y, w, h]?" if fmt == "xywh" else ""))
    elif units == "pixels" and (x1 - x0 < 1 or y1 - y0 < 1):
        why = "smaller than one pixel (normalised coordinates? pass --box-units normalised)"
    if why:
        raise EvaluationError(f"--box-column '{column}': box {list(box)}{where} is not a valid {fmt} "
                              f"{BOX_FORMATS[fmt].layout} box in {units} of its {w}x{h} image: {why}; declare the "
                              "data's convention with --box-format (xyxy, xywh) and --box-units (pixels, normalised)")
    return x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y
