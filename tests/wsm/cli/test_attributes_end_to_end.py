"""The ISIC 2018 Task 2 path end to end: the emulator serves the challenge zips (images, lesion masks, attribute
masks made from the embedded sample's real images, see attribute_factory) -> `wsm download --challenge isic2018
--task attributes` -> `wsm train --task attributes` -> `wsm report --attributes`. No real Task 2 masks ship with
wsm: the attribute masks are thresholded structures inside the real lesions, so the numbers mean nothing; the path
and the files do."""
from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
from attribute_factory import make_attribute_data
from PIL import Image

from archive_client.challenges import ATTRIBUTES
from wsm.cli import build_parser, main


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from archive_client.emulator import EmulatorConfig, EmulatorServer

    root = make_attribute_data(tmp_path_factory.mktemp("served") / "DATA", n_images=20)
    with EmulatorServer(root, config=EmulatorConfig(seed=0)) as server:
        yield server


def test_download_train_and_report_attribute_maps(served, tmp_path, capsys):
    data, run, report = tmp_path / "DATA", tmp_path / "RUN", tmp_path / "REPORT"
    url = ["--challenge-url", served.challenge_url]
    assert main(["download", "--challenge", "isic2018", "--inputs", "--splits", "train,val", "-o", str(data),
                 *url]) == 0
    assert main(["download", "--challenge", "isic2018", "--task", "attributes", "--splits", "train,val",
                 "-o", str(data), *url]) == 0
    assert len(list((data / "attributes" / "isic2018").glob("*_attribute_*.png"))) == 5 * 16   # train 12 + val 4

    code = main(["-q", "train", "--task", "attributes", "--with-lesion", "-d", str(data), "-o", str(run),
                 "--train-split", "train", "--eval-split", "val", "--arch", "unet", "--encoder", "test_resnet",
                 "--no-pretrained", "--size", "64", "--epochs", "2", "-b", "4"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_train"] == 12 and metrics["n_eval"] == 4
    assert set(metrics["attribute_scores"]) >= {*ATTRIBUTES, "micro_average", "mean_jaccard"}
    assert metrics["config"]["channels"] == [*ATTRIBUTES, "lesion"]
    # the recorded command is the one to rerun: an attribute run, without the lesion runs' label flags
    assert metrics["command"].startswith("wsm train --task attributes --with-lesion --data ")
    assert "--num-classes" not in metrics["command"] and "--labels" not in metrics["command"]
    parsed = build_parser().parse_args(shlex.split(metrics["command"])[1:])
    assert (parsed.task, parsed.with_lesion, parsed.encoder, parsed.epochs) == ("attributes", True, "test_resnet", 2)
    val_ids = sorted((run / "eval_ids.txt").read_text().split())
    assert len(val_ids) == 4 and not set(val_ids) & set((run / "train_ids.txt").read_text().split())
    for isic_id in val_ids:     # one 0/255 PNG per image and attribute, at the image's size
        with Image.open(next((data / "images").glob(f"{isic_id}.*"))) as image:
            size = image.size
        for attribute in ATTRIBUTES:
            with Image.open(run / "predictions" / f"{isic_id}_attribute_{attribute}.png") as mask:
                assert mask.mode == "L" and mask.size == size
                assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    assert (run / "report" / "report.html").is_file()

    capsys.readouterr()
    assert main(["report", "--attributes", str(run / "predictions"), "-d", str(data), "--split", "val",
                 "-o", str(report)]) == 0
    out = capsys.readouterr()
    assert "micro average" in out.err and str(report / "report.html") in out.out
    page = (report / "report.html").read_text()
    for attribute in ATTRIBUTES:
        assert f'<h2 id="{attribute}">' in page
    scores = json.loads((report / "metrics.json").read_text())["scores"]
    assert scores["n_images"] == 4
    assert scores == json.loads((run / "report" / "metrics.json").read_text())["scores"]


def test_a_missing_map_is_listed_not_scored_and_the_report_says_so(served, tmp_path, capsys):
    data = tmp_path / "DATA"
    url = ["--challenge-url", served.challenge_url]
    assert main(["-q", "download", "--challenge", "isic2018", "--inputs", "--splits", "val", "-o", str(data),
                 *url]) == 0
    assert main(["-q", "download", "--challenge", "isic2018", "--task", "attributes", "--splits", "val",
                 "-o", str(data), *url]) == 0
    truths = data / "attributes" / "isic2018"
    maps = tmp_path / "maps"
    maps.mkdir()
    for path in truths.glob("*.png"):          # the truths themselves as maps, less one
        (maps / path.name).write_bytes(path.read_bytes())
    dropped = sorted(maps.glob("*_attribute_streaks.png"))[0]
    dropped.unlink()
    code = main(["report", "--attributes", str(maps), "-d", str(data), "-o", str(tmp_path / "REPORT")])
    assert code == 1                           # something was not scored: not a clean pass
    metrics = json.loads((tmp_path / "REPORT" / "metrics.json").read_text())
    assert metrics["missing"] == [[dropped.name.split("_attribute_")[0], "streaks"]]
    for attribute in ATTRIBUTES:               # the truths as maps score 1 wherever an attribute is shown
        jaccard = metrics["scores"][attribute]["jaccard"]
        assert jaccard is None or jaccard == pytest.approx(1.0)
    assert "Attribute masks without a map (1)" in (tmp_path / "REPORT" / "report.html").read_text()
