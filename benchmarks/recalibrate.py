"""A fitted bundle recalibrated on its own calibration masks under other generate-time settings: what `wsm fit`
would have chosen (thresholds, CRF, quality model) had the pipeline held those settings, without training again.

    python benchmarks/recalibrate.py --bundle out/bench-quality/fold0/bundle-default --data out/bench-quality/data \\
        --out out/bundle-cascade --set cascade.enabled=true

`wsm fit --from-bundle` refuses the masks a bundle was fitted on (they would not be new masks); here the same ones
calibrate again, as fit did, so that a setting added after the fit (the cascade) can be compared with the bundle as
it was (benchmarks/generality.py --bundle OUT). The networks are copied unchanged; the calibration runs through
fit's own code (wsm.fit.driver._calibrate_bundle) on the ids of the bundle's calibration.json, read from DATA.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="the fitted bundle")
    parser.add_argument("--data", type=Path, required=True, help="the DATA it was fitted on (its calibration masks)")
    parser.add_argument("--out", type=Path, required=True, help="the recalibrated bundle (replaced)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a generate-time setting, e.g. cascade.enabled=true (repeatable)")
    args = parser.parse_args()

    from wsm.fit.driver import FitSummary, _calibrate_bundle
    from wsm.folders.bundle import BundleFolder, load_bundle, write_pipeline
    from wsm.selection import read_manifest, read_truth, with_truth

    ids = json.loads((args.bundle / "calibration.json").read_text())["isic_ids"]
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(args.bundle, args.out, ignore=shutil.ignore_patterns("work"))
    bundle = load_bundle(args.out).with_inference_overrides(args.overrides)
    rows = with_truth(read_manifest(args.data), read_truth(args.data))
    rows = rows.set_index("isic_id").loc[ids].reset_index()          # in the order the fit calibrated them
    folder, summary = BundleFolder(args.out), FitSummary(bundle=args.out)
    resolved = _calibrate_bundle(args.data, rows, bundle.load_models(), bundle.resolved, folder, False, {}, summary)
    write_pipeline(folder, resolved)
    print(json.dumps({"bundle": str(args.out), "set": args.overrides, "images": len(ids),
                      **{k: v for k, v in summary.calibration.__dict__.items() if k != "grid"}}))


if __name__ == "__main__":
    sys.exit(main())
