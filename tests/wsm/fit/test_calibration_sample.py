"""Which masks calibrate when there are more than ``[calibration] max_images``."""
import pandas as pd

from wsm.fit.driver import calibration_sample


def _rows(ids) -> pd.DataFrame:
    ids = list(ids)
    return pd.DataFrame({"isic_id": ids, "file": [f"{i}.jpg" for i in ids]})


def test_all_rows_calibrate_when_they_fit():
    rows = _rows(f"ISIC_{i:07d}" for i in range(5))
    assert calibration_sample(rows, 5, seed=0).equals(rows)


def test_a_sample_is_drawn_by_id_not_by_position():
    ids = [f"ISIC_{i:07d}" for i in range(200)]
    chosen = calibration_sample(_rows(ids), 50, seed=0)
    assert len(chosen) == 50 and list(chosen["isic_id"]) == sorted(chosen["isic_id"])    # in the rows' order
    assert list(chosen["isic_id"]) != ids[:50]                      # not the first ones of a sorted manifest
    assert max(chosen["isic_id"]) > ids[150]                         # drawn from the whole range
    shuffled = calibration_sample(_rows(ids[::-1]), 50, seed=0)
    assert set(shuffled["isic_id"]) == set(chosen["isic_id"])        # the same ids whatever the manifest's order
    assert set(calibration_sample(_rows(ids), 50, seed=1)["isic_id"]) != set(chosen["isic_id"])
