"""Object boxes: both layouts and both units give the same pixel corners; invalid boxes are one error naming why."""

import pytest

from aft_hf.evaluate.base import EvaluationError
from aft_hf.evaluate.boxes import BOX_FORMATS, box_layout, pixel_corners


def test_layouts_and_units_give_the_same_corners():
    size = (40, 20)  # width, height
    assert pixel_corners([4, 2, 24, 12], size) == (4, 2, 24, 12)
    assert pixel_corners([4, 2, 20, 10], size, fmt="xywh") == (4, 2, 24, 12)
    assert pixel_corners([0.1, 0.1, 0.6, 0.6], size, units="normalised") == pytest.approx((4, 2, 24, 12))
    assert pixel_corners([0.1, 0.1, 0.5, 0.5], size, fmt="xywh", units="normalised") == pytest.approx((4, 2, 24, 12))
    assert box_layout("xywh") == "[x, y, w, h]" and set(BOX_FORMATS) == {"xyxy", "xywh"}


def test_a_box_may_pass_the_border_by_a_pixel_only():
    assert pixel_corners([-1, 0, 41, 20], (40, 20)) == (-1, 0, 41, 20)
    with pytest.raises(EvaluationError, match="outside the image"):
        pixel_corners([0, 0, 43, 20], (40, 20))


@pytest.mark.parametrize("box, kw, why", [
    ([10, 10, 5, 15], {}, "inverted or empty"),
    ([10, 10, 0, 5], {"fmt": "xywh"}, "width or height <= 0"),
    ([30, 5, 20, 10], {"fmt": "xywh"}, "a corner box read as"),
    ([0.1, 0.1, 0.5, 0.5], {}, "smaller than one pixel"),
    ([0, 0, 2, 2], {"units": "normalised"}, "outside the image"),
])
def test_invalid_boxes_are_named(box, kw, why):
    with pytest.raises(EvaluationError, match=why) as info:
        pixel_corners(box, (40, 20), column="bbox", **kw)
    assert "--box-column 'bbox'" in str(info.value) and "\n" not in str(info.value)


def test_unknown_format_or_units_are_refused():
    with pytest.raises(EvaluationError, match="unknown box format 'cxcywh'"):
        pixel_corners([0, 0, 1, 1], (4, 4), fmt="cxcywh")
    with pytest.raises(EvaluationError, match="units 'percent'"):
        pixel_corners([0, 0, 1, 1], (4, 4), units="percent")
