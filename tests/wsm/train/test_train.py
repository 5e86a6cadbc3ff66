"""`wsm train` on synthetic DATA folders with tiny models: label sources, outputs, resume, multi-class, the label
map dataset, accumulation and the distributed batch sampler."""
from __future__ import annotations

import dataclasses
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from archive_client.layout import DataLayout  # noqa: E402
from archive_client.manifest import GT_MANIFEST  # noqa: E402
from wsm.cli import main  # noqa: E402
from wsm.io.tables import write_table_atomic
from wsm.train import TrainOptions, load_model, run  # noqa: E402
from wsm.train.rows import training_rows  # noqa: E402

torch.set_num_threads(1)

TINY = ["--encoder", "test_resnet", "--no-pretrained", "--size", "64", "--batch-size", "8", "--lr", "0.01"]


def _train(*args) -> int:
    return main(["-q", "train", *TINY, *args])


@pytest.fixture(scope="module")
def half_labelled(data, tmp_path_factory):
    """The same images, but 8 of the 24 train images have no official mask (unlabelled); and a WSM folder with a
    weak map for *every* image (1 inside the ellipse, 255 on a 2-pixel band at its edge, 0 outside)."""
    import cv2

    root = tmp_path_factory.mktemp("half") / "DATA"
    root.mkdir()
    for name in ("images", "masks", "manifest.parquet"):
        os.symlink(data / name, root / name)
    gt = pd.read_parquet(data / "gt_manifest.parquet")
    unlabelled = sorted(gt[gt["split"] == "train"]["isic_id"])[:8]
    gt = gt[~gt["isic_id"].isin(unlabelled)]
    import pyarrow as pa

    write_table_atomic(pa.Table.from_pandas(gt, schema=GT_MANIFEST, preserve_index=False),
                       DataLayout(root).gt_manifest)
    wsm = root.parent / "WSM"
    wsm.mkdir()
    rows = []
    for mask_path in sorted((data / "masks" / "isic2018").glob("*.png")):
        isic_id = mask_path.name.removesuffix("_segmentation.png")
        mask = np.asarray(Image.open(mask_path)) > 128
        band = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8)) > 0
        label = np.where(band, 255, mask.astype(np.uint8)).astype(np.uint8)
        Image.fromarray(label).save(wsm / f"{isic_id}.png")
        rows.append({"isic_id": isic_id, "path": f"{isic_id}.png", "status": "ok"})
    pd.DataFrame(rows).to_parquet(wsm / "manifest.parquet")
    return root, wsm, unlabelled


def test_cli_choices_match_the_registries():
    from wsm.cli.train import ARCH_CHOICES, LOSS_CHOICES
    from wsm.models.segmentation import ARCHITECTURES
    from wsm.learn.losses import LOSSES

    assert ARCH_CHOICES == tuple(ARCHITECTURES) and LOSS_CHOICES == tuple(LOSSES)


def test_official_masks_run_writes_everything(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train("--data", str(data), "--out", str(out), "--epochs", "2", "--save-predictions") == 0
    for name in ("config.json", "metrics.json", "per_image.csv", "model.safetensors", "checkpoint.pt",
                 "train_ids.txt", "eval_ids.txt"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 0 and metrics["n_train"] == 24 and metrics["n_eval"] == 8
    assert metrics["n_train_official"] == 24 and metrics["n_train_weak"] == 0
    assert metrics["command"].startswith("wsm train --data") and "--encoder test_resnet" in metrics["command"]
    m = metrics["metrics"]
    assert m["n_images"] == 8 and {"jaccard", "threshold_jaccard", "dice", "accuracy"} <= set(m)
    assert 0 <= m["threshold_jaccard"] <= m["jaccard"] <= 1
    assert len(metrics["train_losses"]) == 2
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 8 and per_image["jaccard"].mean() == pytest.approx(m["jaccard"])
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["split_train"] == "train" and config["loss"] == "bce+dice"
    assert len((out / "train_ids.txt").read_text().splitlines()) == 24
    preds = sorted((out / "predictions").glob("*_segmentation.png"))
    assert len(preds) == 8 and set(np.unique(np.asarray(Image.open(preds[0])))) <= {0, 255}

    # the saved model gives the predictions that were scored
    model, cfg = load_model(out)
    assert cfg["options"]["encoder"] == "test_resnet" and not model.training

    # an existing run is never overwritten: with other settings it is refused; with the same ones (the old
    # --resume flag or not) the finished run is re-evaluated
    assert _train("--data", str(data), "--out", str(out), "--epochs", "2", "--loss", "dice") == 2
    assert "other settings" in capsys.readouterr().err
    for again in ([], ["--resume"]):
        assert _train("--data", str(data), "--out", str(out), "--epochs", "2", *again) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["resumed_from_epoch"] == 2 and metrics["metrics"] == pytest.approx(m)


def test_resume_after_an_interruption_matches_an_uninterrupted_run(data, tmp_path, monkeypatch):
    import wsm.learn.losses

    opts = TrainOptions(data=data, out=tmp_path / "full", encoder="test_resnet", pretrained=False, size=64, epochs=2,
                        batch_size=8, lr=0.01, progress=False)
    full = run(opts)
    expected = {k: v.clone() for k, v in load_model(opts.out)[0].state_dict().items()}

    real = wsm.learn.losses.create_loss
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        loss = real(*args, **kwargs)

        def crashing(outputs, targets):
            calls["n"] += 1
            if calls["n"] == 4:          # the first step of epoch 2 (3 steps per epoch)
                raise KeyboardInterrupt
            return loss(outputs, targets)
        return crashing

    monkeypatch.setattr(wsm.learn.losses, "create_loss", interrupted)
    cut = dataclasses.replace(opts, out=tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        run(cut)
    monkeypatch.setattr(wsm.learn.losses, "create_loss", real)
    from wsm.errors import WsmError

    with pytest.raises(WsmError, match="already holds a training run"):
        run(dataclasses.replace(cut, resume=False))
    resumed = run(cut)
    assert resumed.losses == full.losses and resumed.metrics == full.metrics
    for key, value in load_model(cut.out)[0].state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_training_rows_per_label_source(half_labelled):
    root, wsm, unlabelled = half_labelled
    official = training_rows(root, "official", "train")
    assert len(official) == 16 and set(official["label_source"]) == {"official"}
    weak = training_rows(root, str(wsm), "train")
    # the 16 train images with masks and the 8 without any official mask; never val or test images
    assert len(weak) == 24 and set(weak["label_source"]) == {"weak"}
    gt = pd.read_parquet(root / "gt_manifest.parquet")
    held = set(gt[gt["split"] != "train"]["isic_id"])
    assert not held & set(weak["isic_id"])
    both = training_rows(root, "both", "train", wsm=wsm)
    assert len(both) == 24
    assert set(both[both["label_source"] == "weak"]["isic_id"]) == set(unlabelled)
    assert (both[both["label_source"] == "official"]["label_kind"] == "mask").all()
    from wsm.selection import DataError

    with pytest.raises(DataError, match="--maps"):
        training_rows(root, "both", "train")
    # several splits joined by commas: their masks together, still never another split's
    val = set(gt[gt["split"] == "val"]["isic_id"])
    together = training_rows(root, "official", "train,val")
    assert val and set(together["isic_id"]) == set(official["isic_id"]) | val
    with pytest.raises(DataError, match="unknown split 'tran'"):
        training_rows(root, "official", "train,tran")
    with pytest.raises(DataError, match="does not exist"):
        training_rows(root, str(root / "nope"), "train")


def test_min_confidence_keeps_the_confident_weak_maps(half_labelled, tmp_path):
    import shutil

    from wsm.selection import DataError

    root, wsm, unlabelled = half_labelled
    scored = tmp_path / "WSM"
    shutil.copytree(wsm, scored)
    manifest = pd.read_parquet(scored / "manifest.parquet").sort_values("isic_id").reset_index(drop=True)
    manifest["confidence"] = np.linspace(0.0, 0.9, len(manifest))
    manifest.to_parquet(scored / "manifest.parquet")
    confident = set(manifest[manifest["confidence"] >= 0.5]["isic_id"])
    both = training_rows(root, "both", "train", wsm=scored, min_confidence=0.5)
    assert set(both[both["label_source"] == "weak"]["isic_id"]) == set(unlabelled) & confident
    assert (both["label_source"] == "official").sum() == 16          # official masks are never filtered
    with pytest.raises(DataError, match="no confidence values"):
        training_rows(root, "both", "train", wsm=wsm, min_confidence=0.5)
    # the maps predicted good, by the bundle's quality model
    manifest["predicted_jaccard"] = np.linspace(0.9, 0.0, len(manifest))
    manifest.to_parquet(scored / "manifest.parquet")
    good = set(manifest[manifest["predicted_jaccard"] >= 0.6]["isic_id"])
    kept = training_rows(root, "both", "train", wsm=scored, min_predicted_jaccard=0.6)
    assert set(kept[kept["label_source"] == "weak"]["isic_id"]) == set(unlabelled) & good
    with pytest.raises(DataError, match="no predicted_jaccard values"):
        training_rows(root, "both", "train", wsm=wsm, min_predicted_jaccard=0.5)
    with pytest.raises(DataError, match="confidence >= 0.95"):
        training_rows(root, str(scored), "train", min_confidence=0.95)
    with pytest.raises(DataError, match="within 0..1"):
        training_rows(root, str(scored), "train", min_confidence=float("nan"))
    with pytest.raises(DataError, match="needs --labels both"):
        training_rows(root, "official", "train", min_confidence=0.5)


def test_both_trains_with_ignored_pixels(half_labelled, tmp_path):
    root, wsm, _ = half_labelled
    out = tmp_path / "both"
    assert _train("--data", str(root), "--out", str(out), "--labels", "both", "--maps", str(wsm), "--epochs", "1",
                  "--loss", "hybrid", "--arch", "linknet") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train_official"] == 16 and metrics["n_train_weak"] == 8
    assert np.isfinite(metrics["train_losses"][0]) and metrics["metrics"]["n_images"] == 8


def test_eval_images_are_never_trained_on(data, tmp_path, capsys):
    assert _train("--data", str(data), "--out", str(tmp_path / "r"), "--train-split", "labeled",
                  "--epochs", "1") == 2
    assert "also training images" in capsys.readouterr().err
    assert _train("--data", str(data), "--out", str(tmp_path / "r2"), "--train-split", "labeled",
                  "--eval-split", "none", "--epochs", "1") == 0
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["metrics"] == {}


def test_init_fine_tunes_an_earlier_run_and_refuses_a_dishonest_one(half_labelled, data, tmp_path, capsys):
    from safetensors.torch import load_file

    root, wsm, _ = half_labelled
    weak = tmp_path / "weak"
    assert _train("--data", str(root), "--out", str(weak), "--labels", wsm.as_posix(), "--epochs", "1") == 0
    # lr 0: every trained tensor stays as loaded (only BatchNorm's running statistics move)
    tuned = tmp_path / "tuned"
    assert _train("--data", str(root), "--out", str(tuned), "--init", str(weak), "--epochs", "1", "--lr", "0") == 0
    before, after = load_file(weak / "model.safetensors"), load_file(tuned / "model.safetensors")
    trained = [k for k in before if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert trained and all(torch.equal(before[k], after[k]) for k in trained)
    assert "--init" in json.loads((tuned / "metrics.json").read_text())["command"]
    # another network, a missing folder, and a run that trained on this run's evaluation images are refused
    assert _train("--data", str(root), "--out", str(tmp_path / "a"), "--init", str(weak), "--arch", "linknet") == 2
    assert "another network" in capsys.readouterr().err
    assert _train("--data", str(root), "--out", str(tmp_path / "b"), "--init", str(tmp_path / "nothing")) == 2
    assert "no weights there" in capsys.readouterr().err
    seen_eval = tmp_path / "seen"
    assert _train("--data", str(data), "--out", str(seen_eval), "--train-split", "labeled", "--eval-split", "none",
                  "--epochs", "1") == 0
    assert _train("--data", str(data), "--out", str(tmp_path / "c"), "--init", str(seen_eval)) == 2
    assert "would not be honest" in capsys.readouterr().err
    # ... also through a run in between, which carries the lineage in init_ids.txt
    between = tmp_path / "between"
    assert _train("--data", str(data), "--out", str(between), "--init", str(seen_eval), "--eval-split", "none",
                  "--epochs", "1") == 0
    assert (between / "init_ids.txt").exists()
    assert _train("--data", str(data), "--out", str(tmp_path / "d"), "--init", str(between)) == 2
    assert "would not be honest" in capsys.readouterr().err
    assert _train("--data", str(root), "--out", str(tmp_path / "e"), "--init", str(weak), "--weights",
                  str(weak / "model.safetensors")) == 2
    assert "leave out --weights" in capsys.readouterr().err


def test_bad_options_are_one_line_errors(data, tmp_path, capsys):
    assert _train("--data", str(data), "--out", str(tmp_path / "a"), "--encoder", "no_such_net") == 2
    assert "not a timm model" in capsys.readouterr().err
    assert _train("--data", str(data), "--out", str(tmp_path / "b"), "--loss", "ce") == 2
    assert "K > 1" in capsys.readouterr().err
    assert main(["-q", "train", "--data", str(data), "--out", str(tmp_path / "c"), "--size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert _train("--data", str(data), "--out", str(tmp_path / "d"), "--num-classes", "3") == 2
    assert "class-index maps" in capsys.readouterr().err
    assert main(["-q", "train", "--data", str(data), "--out", str(tmp_path / "e"), "--train-split", "train,"]) == 2
    assert "unknown split '' in 'train,'" in capsys.readouterr().err


@pytest.mark.parametrize("loss", ["ce", "focal"])
def test_multiclass_maps(data, class_maps, tmp_path, loss):
    out = tmp_path / loss
    assert _train("--data", str(data), "--out", str(out), "--labels", str(class_maps), "--num-classes", "3",
                  "--loss", loss, "--epochs", "1", "--arch", "deeplabv3plus") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["metrics"]
    assert m["n_images"] == 8 and {"jaccard_0", "jaccard_1", "jaccard_2", "mean_jaccard", "mean_dice"} <= set(m)
    weights = metrics["config"]["class_weights"]
    assert len(weights) == 3 and weights[0] < weights[1]          # background is the most frequent class


def test_label_map_dataset_keeps_255_and_moves_the_guide_with_the_label(data, tmp_path):
    from wsm.io.images import ImageDecodeError
    from wsm.learn.datasets import LabelMapDataset

    label = np.zeros((64, 64), np.uint8)
    label[10:40, 20:50] = 1
    label[10:14, 20:50] = 255
    guide = np.where(label == 1, 200, np.where(label == 255, 100, 0)).astype(np.uint8)
    Image.fromarray(label).save(tmp_path / "label.png")
    Image.fromarray(guide).save(tmp_path / "guide.png")
    rows = [{"isic_id": "ISIC_0000000", "file": "images/ISIC_0000000.jpg", "label_file": str(tmp_path / "label.png"),
             "label_kind": "labels", "guide_file": str(tmp_path / "guide.png")}]
    ds = LabelMapDataset(data, rows, size=64, augment=True, seed=0, guides=True)
    for epoch in range(4):
        ds.set_epoch(epoch)
        x, y = ds[0]
        assert x.shape == (4, 64, 64) and y.shape == (1, 64, 64) and y.dtype == torch.float32
        assert set(y.unique().tolist()) <= {0.0, 1.0, 255.0} and (y == 255).any()
        g = x[3]
        torch.testing.assert_close(g[y[0] == 1], torch.full_like(g[y[0] == 1], 200 / 255))
        torch.testing.assert_close(g[y[0] == 255], torch.full_like(g[y[0] == 255], 100 / 255))
    multi = LabelMapDataset(data, rows, size=32, num_classes=3)
    x, y = multi[0]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32) and y.dtype == torch.int64
    assert multi.class_pixel_counts().sum() == (y != 255).sum()
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(tmp_path / "grey.png")   # not a label map
    with pytest.raises(ImageDecodeError, match="but this one holds 128"):
        LabelMapDataset(data, [dict(rows[0], label_file=str(tmp_path / "grey.png"))], size=32)[0]


def test_weak_maps_images_take_their_own_augmentation(data, tmp_path):
    from wsm.learn.augment import AugmentConfig
    from wsm.learn.datasets import LabelMapDataset

    label = np.zeros((64, 64), np.uint8)
    label[:, :20] = 1                                                   # lesion on the left
    Image.fromarray(label).save(tmp_path / "label.png")
    Image.fromarray(label * 255).save(tmp_path / "mask.png")
    row = {"isic_id": "ISIC_0000000", "file": "images/ISIC_0000000.jpg"}
    rows = [dict(row, label_file=str(tmp_path / "label.png"), label_kind="labels"),
            dict(row, label_file=str(tmp_path / "mask.png"), label_kind="mask")]
    nothing = AugmentConfig(mirror_p=0, flip_p=0, rotate_deg=(0, 0), poisson_lambda=(0, 0), gamma=(1, 1),
                            blur_sigma=(0, 0), dropout_p=(0, 0))
    mirror = dataclasses.replace(nothing, mirror_p=1.0)
    ds = LabelMapDataset(data, rows, size=64, augment=True, augment_cfg=nothing, weak_augment_cfg=mirror)
    (weak_x, weak_y), (official_x, official_y) = ds[0], ds[1]
    assert weak_y[0, :, -1].eq(1).all() and weak_y[0, :, 0].eq(0).all()           # mirrored with its image
    assert official_y[0, :, 0].eq(1).all() and official_y[0, :, -1].eq(0).all()   # untouched
    torch.testing.assert_close(weak_x, official_x.flip(-1))
    same = LabelMapDataset(data, rows, size=64, augment=True, augment_cfg=nothing)   # default: one recipe for all
    torch.testing.assert_close(same[0][0], official_x)


def test_weak_augment_names_a_recipe(tmp_path):
    from wsm.train import TrainOptions
    from wsm.learn.augment import WEAK_AUGMENTS
    from wsm.train.options import WEAK_AUGMENT_CHOICES, TrainError

    assert set(WEAK_AUGMENT_CHOICES) == set(WEAK_AUGMENTS)
    with pytest.raises(TrainError, match="weak_augment must be one of same, strong"):
        TrainOptions(data=tmp_path, out=tmp_path / "RUN", weak_augment="heavy")


def test_augment_strength_sets_every_image_s_recipe_and_weak_maps_follow_it(tmp_path):
    from wsm.learn.augment import AUGMENT_STRENGTHS, SEGMENTER_AUGMENT, WEAK_MAP_AUGMENT
    from wsm.train import TrainOptions
    from wsm.train.options import AUGMENT_STRENGTH_CHOICES, TrainError

    assert set(AUGMENT_STRENGTH_CHOICES) == set(AUGMENT_STRENGTHS)
    standard = TrainOptions(data=tmp_path, out=tmp_path / "RUN").augmentation()
    assert standard == {"augment": True, "augment_cfg": SEGMENTER_AUGMENT, "weak_augment_cfg": None}
    strong = TrainOptions(data=tmp_path, out=tmp_path / "RUN", augment_strength="strong").augmentation()
    assert strong["augment_cfg"] == WEAK_MAP_AUGMENT and strong["weak_augment_cfg"] is None   # weak: the same
    with pytest.raises(TrainError, match="augment_strength must be one of standard, strong"):
        TrainOptions(data=tmp_path, out=tmp_path / "RUN", augment_strength="heavy")


def test_distributed_batches_are_the_one_process_batches():
    from torch.utils.data import DataLoader

    from wsm.learn.loop import DistributedBatchSampler, _epoch_seed

    for n, batch, seed, epoch in [(10, 4, 0, 0), (37, 8, 3, 5), (16, 16, 1, 2)]:
        generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        loader = DataLoader(list(range(n)), batch_size=batch, shuffle=True, generator=generator)
        expected = [b.tolist() for b in loader]
        one = DistributedBatchSampler(n, batch, seed, epoch)
        assert list(one) == expected
        ranks = [list(DistributedBatchSampler(n, batch, seed, epoch, world_size=2, rank=r)) for r in (0, 1)]
        assert [sorted(a + b) for a, b in zip(*ranks)] == [sorted(b) for b in expected]
    # a last batch smaller than the number of processes is dropped
    assert len(DistributedBatchSampler(9, 4, 0, 0, world_size=2, rank=0)) == 2     # 4, 4, (1)
    assert len(DistributedBatchSampler(10, 4, 0, 0, world_size=2, rank=0)) == 3    # 4, 4, 2
    assert len(DistributedBatchSampler(10, 4, 0, 0, world_size=3, rank=0)) == 2    # 4, 4, (2)


def test_accumulation_equals_one_big_batch_without_batchnorm(tmp_path):
    """With no BatchNorm, 2 chunks of 4 give the gradients of one batch of 8 (up to float summation order)."""
    from torch import nn
    from torch.utils.data import TensorDataset

    from wsm.learn.loop import TrainConfig, train

    gen = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(20, 3, 8, 8, generator=gen), torch.rand(20, 1, 8, 8, generator=gen))
    states = []
    for accumulate in (1, 2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
        cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, accumulate=accumulate)
        result = train(model, dataset, nn.MSELoss(), cfg, tmp_path / str(accumulate), progress=False)
        states.append((model.state_dict(), result.epoch_losses))
    for key, value in states[0][0].items():
        torch.testing.assert_close(states[1][0][key], value, rtol=1e-5, atol=1e-6)
    assert states[1][1] == pytest.approx(states[0][1], rel=1e-6)


def test_unknown_lineage_is_carried_down_a_chain_of_runs(half_labelled, tmp_path, caplog):
    import shutil

    root, wsm, _ = half_labelled
    first = tmp_path / "first"
    assert _train("--data", str(root), "--out", str(first), "--labels", wsm.as_posix(), "--epochs", "1") == 0
    bare = tmp_path / "elsewhere" / "weights.safetensors"
    bare.parent.mkdir()
    shutil.copy(first / "model.safetensors", bare)
    from_bare, next_run = tmp_path / "from-bare", tmp_path / "next"
    with caplog.at_level("WARNING"):
        assert _train("--data", str(root), "--out", str(from_bare), "--init", str(bare), "--epochs", "1") == 0
    assert "honest only if" in caplog.text and (from_bare / "init_unknown.txt").exists()
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert _train("--data", str(root), "--out", str(next_run), "--init", str(from_bare), "--epochs", "1") == 0
    assert "honest only if" in caplog.text and (next_run / "init_unknown.txt").exists()


def test_a_fit_bundle_records_the_masks_its_prior_learnt_from(tmp_path):
    from wsm.folders.run import trained_ids

    (tmp_path / "provenance.json").write_text(json.dumps({"fit_mask_ids": ["ISIC_0000001", "ISIC_0000002"]}))
    assert trained_ids(tmp_path) == {"ISIC_0000001", "ISIC_0000002"}
    assert trained_ids(tmp_path / "elsewhere") is None


def test_an_official_mask_holding_other_values_is_refused_not_thresholded(data, tmp_path, capsys):
    """Training reads official masks with the same reader as the report: a mask whose values are neither 0/255 nor
    0/1 is an error that names them, not a lesion wherever a value exceeds 128."""
    import shutil

    copy = tmp_path / "DATA"
    shutil.copytree(data, copy)
    gt = pd.read_parquet(copy / "gt_manifest.parquet")
    mask_file = copy / gt[gt["split"] == "train"]["mask_file"].iloc[0]
    values = np.asarray(Image.open(mask_file))
    Image.fromarray(np.where(values > 0, 200, 100).astype(np.uint8)).save(mask_file)
    assert _train("--data", str(copy), "--out", str(tmp_path / "run"), "--epochs", "1") == 2
    assert "100, 200" in capsys.readouterr().err
