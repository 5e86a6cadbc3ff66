"""One self-training round end to end on tiny models: a bundle's maps teach a student, the student becomes the
prior of the next bundle (`wsm fit --prior-run`), and the lineage keeps every number honest."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402

from archive_client.manifest import GT_MANIFEST  # noqa: E402
from wsm.cli import main  # noqa: E402
from wsm.io.tables import write_table_atomic  # noqa: E402

FIT = ["prior.encoder=test_resnet", "prior.size=64", "prior.epochs=1", "prior.min_steps=0", "prior.batch_size=8",
       "prior.pretrained=false", "preprocess.working_size=96", "calibration.max_images=6", "crf.bilateral_sxy=4.0"]
STUDENT = ["--encoder", "test_resnet", "--no-pretrained", "--size", "64", "--batch-size", "8", "--epochs", "1"]


def _fit(*args) -> int:
    return main(["-q", "fit", *args, *[a for value in FIT for a in ("--set", value)]])


def _train(*args) -> int:
    return main(["-q", "train", *STUDENT, *args])


def _ids(path) -> set[str]:
    return {line.split("\t")[0] for line in path.read_text().splitlines()}


@pytest.mark.slow
def test_a_student_becomes_the_next_teacher_and_no_number_comes_from_a_mask_that_fed_a_teacher(tmp_path, capsys):
    from datafactory import make_data

    data = make_data(tmp_path / "DATA", n_images=40, with_masks=True, seed=0)    # 24 train, 8 val, 8 test
    gt = pd.read_parquet(data / "gt_manifest.parquet")
    unlabelled = sorted(gt[gt["split"] == "train"]["isic_id"])[:8]                 # the archive at large
    gt = gt[~gt["isic_id"].isin(unlabelled)]
    write_table_atomic(pa.Table.from_pandas(gt, schema=GT_MANIFEST, preserve_index=False), data / "gt_manifest.parquet")
    test_ids = set(gt[gt["split"] == "test"]["isic_id"])

    # round 0: a bundle fitted on the train and val masks, and its maps of every image
    assert _fit("--data", str(data), "--out", str(tmp_path / "B0")) == 0
    fitted0 = set(json.loads((tmp_path / "B0" / "provenance.json").read_text())["fit_mask_ids"])
    assert fitted0 and not fitted0 & test_ids
    assert main(["-q", "generate", "-d", str(data), "--bundle", str(tmp_path / "B0"), "-o", str(tmp_path / "W0"),
                 "-j", "1"]) == 0

    # a student on official + weak maps is scored on the test split; the val split fed its teacher: refused
    student = tmp_path / "S1"
    assert _train("-d", str(data), "-o", str(student), "--labels", "both", "-m", str(tmp_path / "W0"),
                  "--eval-split", "test") == 0
    assert _ids(student / "teacher_ids.txt") == fitted0
    assert json.loads((student / "metrics.json").read_text())["n_train_weak"] == len(unlabelled)
    assert _train("-d", str(data), "-o", str(tmp_path / "dishonest"), "--labels", "both", "-m", str(tmp_path / "W0"),
                  "--eval-split", "val") == 2
    assert "would not be honest" in capsys.readouterr().err and not (tmp_path / "dishonest").exists()

    # round 1: the student is the prior of the next bundle; everything it learnt from counts as fitted
    assert _fit("--data", str(data), "--out", str(tmp_path / "B1"), "--prior-run", str(student)) == 0
    provenance = json.loads((tmp_path / "B1" / "provenance.json").read_text())
    learnt = _ids(student / "train_ids.txt") | fitted0
    assert set(provenance["fit_mask_ids"]) >= learnt and provenance["prior_run"] == str(student.resolve())
    assert provenance["initial_weights"]["prior"]["source"] == "run"
    from wsm.folders.bundle import load_bundle
    from wsm.stages.preprocess import changes_pixels

    assert not changes_pixels(load_bundle(tmp_path / "B1").recipe.preprocess)   # the files' pixels, as it learnt
    assert main(["-q", "generate", "-d", str(data), "--bundle", str(tmp_path / "B1"), "-o", str(tmp_path / "W1"),
                 "-j", "1"]) == 0
    maps = pd.read_parquet(tmp_path / "W1" / "manifest.parquet").set_index("isic_id")
    assert maps.loc[sorted(learnt), "mask_used_in_fit"].all()
    assert not maps.loc[sorted(test_ids), "mask_used_in_fit"].any()

    # the next student carries the whole lineage, and is still refused an evaluation split that fed a teacher
    second = tmp_path / "S2"
    assert _train("-d", str(data), "-o", str(second), "--labels", "both", "-m", str(tmp_path / "W1"),
                  "--eval-split", "test", "--weak-augment", "strong") == 0
    assert _ids(second / "teacher_ids.txt") >= fitted0
    config = json.loads((second / "config.json").read_text())
    assert config["options"]["weak_augment"] == "strong" and "--weak-augment strong" in config["command"]
    assert _train("-d", str(data), "-o", str(tmp_path / "d2"), "--labels", "both", "-m", str(tmp_path / "W1"),
                  "--eval-split", "val") == 2


def test_a_run_without_a_lineage_cannot_be_a_teacher(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from wsm.fit.prior_run import PriorRunError, prior_run_settings

    run = tmp_path / "RUN"
    run.mkdir()
    save_file({"weight": torch.zeros(1)}, str(run / "model.safetensors"))     # weights of a run from before cards
    (run / "config.json").write_text(json.dumps({"options": {"arch": "unet", "encoder": "test_resnet", "size": 64,
                                                             "num_classes": 1}}))
    (run / "train_ids.txt").write_text("ISIC_0000001\tofficial\n")
    assert prior_run_settings(run)[1] == {"ISIC_0000001"}
    (run / "init_unknown.txt").write_text("started from a bare weights file\n")
    with pytest.raises(PriorRunError, match="keeps no record"):
        prior_run_settings(run)
    with pytest.raises(PriorRunError, match="not a finished"):
        prior_run_settings(tmp_path / "nothing")


def test_a_run_on_weak_maps_without_its_teacher_record_has_an_unknown_lineage(tmp_path):
    from wsm.folders.run import trained_ids

    run = tmp_path / "RUN"
    run.mkdir()
    (run / "train_ids.txt").write_text("ISIC_0000001\tofficial\nISIC_0000002\tweak\n")
    assert trained_ids(run) is None                      # an older run: which masks taught its maps is unknown
    (run / "teacher_ids.txt").write_text("")             # a run whose teacher used no mask at all
    assert trained_ids(run) == {"ISIC_0000001", "ISIC_0000002"}
    (run / "teacher_ids.txt").write_text("ISIC_0000009\n")
    assert trained_ids(run) == {"ISIC_0000001", "ISIC_0000002", "ISIC_0000009"}
