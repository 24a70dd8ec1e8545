import cv2
import numpy as np
import pytest

from lllite.conditioning import canny
from lllite.metrics import colour_mask, edge_f_score, edge_scores, has_colour_blob, largest_blob_fraction, shape_iou

BACKGROUND = (30, 30, 34)
RED = (225, 45, 45)


def _square_image(top=40, left=40, side=40, colour=RED, size=128):
    image = np.full((size, size, 3), BACKGROUND, np.uint8)
    image[top : top + side, left : left + side] = colour
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return image, mask


@pytest.mark.parametrize(
    "colour, rgb",
    [("red", (225, 45, 45)), ("green", (40, 180, 60)), ("blue", (50, 100, 240)), ("yellow", (240, 210, 40))],
)
def test_colour_mask_finds_each_colour_and_only_it(colour, rgb):
    image, mask = _square_image(colour=rgb)
    np.testing.assert_array_equal(colour_mask(image, colour), mask)
    for other in {"red", "green", "blue", "yellow"} - {colour}:
        assert not colour_mask(image, other).any()


def test_grey_light_and_dark_backgrounds_are_no_colour():
    for grey in (5, 30, 128, 210, 250):
        image = np.full((8, 8, 3), grey, np.uint8)
        assert not any(colour_mask(image, c).any() for c in ("red", "green", "blue", "yellow"))


def test_iou_of_a_perfect_image_is_one():
    image, mask = _square_image()
    assert shape_iou(image, mask, "red") == 1.0


def test_iou_of_a_shifted_square_is_overlap_over_union():
    image, _ = _square_image(left=50)
    _, mask = _square_image(left=40)
    # 40x30 overlap, union 2 * 1600 - 1200
    assert shape_iou(image, mask, "red") == pytest.approx(1200 / 2000)


def test_iou_of_the_wrong_colour_is_zero():
    image, mask = _square_image(colour=(50, 100, 240))
    assert shape_iou(image, mask, "red") == 0.0


def test_iou_of_an_empty_background_image_is_zero():
    image = np.full((128, 128, 3), BACKGROUND, np.uint8)
    _, mask = _square_image()
    assert shape_iou(image, mask, "red") == 0.0


def test_iou_of_an_image_all_in_the_colour_is_the_mask_fraction():
    image = np.full((128, 128, 3), RED, np.uint8)
    _, mask = _square_image()
    assert shape_iou(image, mask, "red") == pytest.approx(1600 / 128**2)


def test_iou_accepts_a_uint8_mask_image():
    image, mask = _square_image()
    assert shape_iou(image, mask.astype(np.uint8) * 255, "red") == 1.0


def test_iou_refuses_an_empty_target_mask():
    image, _ = _square_image()
    with pytest.raises(ValueError, match="mask is empty"):
        shape_iou(image, np.zeros((128, 128), bool), "red")


def test_iou_refuses_mismatched_sizes():
    image, _ = _square_image()
    with pytest.raises(ValueError, match="does not match"):
        shape_iou(image, np.ones((64, 64), bool), "red")


def test_unknown_colour_is_refused_with_the_choices():
    image, mask = _square_image()
    with pytest.raises(ValueError, match="'purple'.*blue.*green.*red.*yellow"):
        shape_iou(image, mask, "purple")


def test_edge_f_score_of_the_image_that_made_the_edges_is_one():
    image, _ = _square_image()
    assert edge_f_score(image, canny(image)) == 1.0


def test_edge_f_score_tolerates_a_shift_within_the_tolerance():
    image, _ = _square_image(left=41)
    edges = canny(_square_image(left=40)[0])
    assert edge_f_score(image, edges, tolerance_px=2) == 1.0


def test_edge_f_score_drops_for_a_shift_beyond_the_tolerance():
    image, _ = _square_image(left=60)
    edges = canny(_square_image(left=40)[0])
    scores = edge_scores(image, edges, tolerance_px=2)
    # only the horizontal sides, where they overlap, still match
    assert 0.2 < scores.precision < 0.6 and 0.2 < scores.recall < 0.6
    assert scores.f_score == pytest.approx(2 * scores.precision * scores.recall / (scores.precision + scores.recall))


def test_edge_f_score_of_an_empty_image_against_edges_is_zero():
    image = np.full((128, 128, 3), BACKGROUND, np.uint8)
    edges = canny(_square_image()[0])
    assert edge_scores(image, edges) == edge_scores(image, edges[..., 0])
    assert edge_f_score(image, edges) == 0.0


def test_edge_f_score_of_empty_image_and_empty_control_is_one():
    image = np.full((128, 128, 3), BACKGROUND, np.uint8)
    assert edge_f_score(image, np.zeros((128, 128, 3), np.uint8)) == 1.0


def test_edge_f_score_refuses_a_negative_tolerance():
    image, _ = _square_image()
    with pytest.raises(ValueError, match="tolerance_px"):
        edge_f_score(image, canny(image), tolerance_px=-1)


def test_blob_of_the_right_colour_and_size_passes():
    image, _ = _square_image(side=40)
    assert largest_blob_fraction(image, "red") == pytest.approx(1600 / 128**2)
    assert has_colour_blob(image, "red")


def test_blob_check_fails_for_wrong_colour_tiny_blob_or_whole_image():
    assert not has_colour_blob(_square_image(side=40)[0], "green")
    assert not has_colour_blob(_square_image(side=8)[0], "red")
    assert not has_colour_blob(np.full((128, 128, 3), RED, np.uint8), "red")
    assert not has_colour_blob(np.full((128, 128, 3), BACKGROUND, np.uint8), "red")


def test_blob_size_is_the_largest_connected_region_not_the_sum():
    image, _ = _square_image(side=40)
    image[0:10, 0:10] = RED
    assert largest_blob_fraction(image, "red") == pytest.approx(1600 / 128**2)


def test_blurred_shape_still_scores_high():
    image, mask = _square_image()
    blurred = cv2.GaussianBlur(image, (5, 5), 1.5)
    assert shape_iou(blurred, mask, "red") > 0.85
