"""Where the benchmarks find the public dev data (docs/RESULTS.md, "The data, the splits and the metrics").

Each script takes the folder as an option (``--source``); its default is ``$WSM_DEV_DATA/<name>``, where
WSM_DEV_DATA defaults to a ``shared/data`` folder beside the project checkout.
"""
from __future__ import annotations

import os
from pathlib import Path

DEV_ROOT = Path(os.environ.get("WSM_DEV_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ISIC2018_CROPS = DEV_ROOT / "isic2018-task1-512"          # ISIC 2018 Task 1 training set, centre-cropped to 512 px
ISIC2017_FULLRES = DEV_ROOT / "isic2017-fullres-sample"   # 8 ISIC 2017 validation images at full resolution
PH2_HALF = DEV_ROOT / "ph2-half"                             # 100 PH2 whole frames (another clinic), masks, pairs.csv
CLINICAL_DERMIS = DEV_ROOT / "clinical-dermis"               # 69 clinical photographs (DermIS), masks, pairs.csv
