"""The benchmarks' own helpers (their numbers come from running them; see docs/RESULTS.md)."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from generality import widen  # noqa: E402


def test_widen_centres_the_crop_on_its_ring_colour_and_pads_the_mask_with_background():
    image = np.full((20, 30, 3), 50, np.uint8)
    image[:8] = image[-8:] = 200  # outer ring: rows are bright, columns 50 -> mean between
    image[5:15, 10:20] = 7
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 255
    canvas, wide_mask = widen(image, mask)
    assert canvas.shape == (20, 45, 3) and wide_mask.shape == (20, 45)
    assert np.array_equal(canvas[:, 7:37], image) and np.array_equal(wide_mask[:, 7:37], mask)
    assert not wide_mask[:, :7].any() and not wide_mask[:, 37:].any()
    fill = canvas[0, 0]
    assert np.all(canvas[:, :7] == fill) and np.all(canvas[:, 37:] == fill)
    assert 50 < fill[0] < 200  # the ring's mean, not black nor a copy of an edge
