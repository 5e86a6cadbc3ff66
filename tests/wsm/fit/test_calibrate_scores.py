"""How calibration and the quality model score a map against its mask."""
import numpy as np

from wsm.fit.calibrate import _jaccard


def test_lesion_a_cascade_s_crop_left_out_counts_against_the_map():
    truth = np.zeros((10, 10), bool)
    truth[2:6, 2:6] = True
    assert _jaccard(truth, truth) == 1.0
    assert _jaccard(truth, truth, missed=16) == 0.5           # as much lesion again outside the crop, all missed
    assert _jaccard(truth, np.zeros_like(truth), missed=3) == 0.0
    assert _jaccard(np.zeros_like(truth), np.zeros_like(truth)) == 1.0     # nothing to find, nothing found
