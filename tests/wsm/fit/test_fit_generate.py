"""`wsm fit` and `wsm generate` end to end on the embedded sample with tiny models."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from wsm.cli import main
from wsm.demo import SAMPLE

TINY = ["classifier.arch=test_resnet", "classifier.size=64", "classifier.epochs=1", "classifier.batch_size=8",
        "prior.encoder=test_resnet", "prior.size=64", "prior.epochs=1", "prior.min_steps=0", "prior.batch_size=8",
        "preprocess.working_size=96", "calibration.max_images=6", "crf.bilateral_sxy=4.0",
        "classifier.pretrained=false", "prior.pretrained=false", "classifier.enabled=true"]


def _sets(values):
    return [arg for v in values for arg in ("--set", v)]


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory) -> Path:
    from archive_client.importer import import_folders

    data = tmp_path_factory.mktemp("data")
    import_folders(data, images=SAMPLE / "images", masks=SAMPLE / "masks", labels=SAMPLE / "labels.csv",
                   challenge="isic2018", split="train", progress=False)
    return data


@pytest.fixture(scope="module")
def bundle(sample_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    assert main(["-q", "fit", "--data", str(sample_data), "--out", str(out), *_sets(TINY)]) == 0
    return out


def _generate(*args) -> int:
    return main(["-q", "generate", "--workers", "1", "--batch-size", "8", *args])


def _maps(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("ISIC_*.png")}


def test_bundle_contents(bundle):
    for name in ("pipeline.toml", "classifier.safetensors", "prior.safetensors", "calibration.json",
                 "provenance.json"):
        assert (bundle / name).exists(), name
    from wsm.folders.bundle import load_bundle

    loaded = load_bundle(bundle)
    assert loaded.recipe.classifier.arch == "test_resnet"
    assert set(loaded.provenance["classes"]) == {"melanoma", "nevus", "seborrheic_keratosis", "other"}
    assert loaded.provenance["fit_mask_ids"], "fit should record whose masks it used"


def test_fit_is_deterministic_on_cpu(sample_data, bundle, tmp_path):
    again = tmp_path / "again"
    assert main(["-q", "fit", "--data", str(sample_data), "--out", str(again), *_sets(TINY)]) == 0
    for name in ("classifier.safetensors", "prior.safetensors", "pipeline.toml"):
        assert (again / name).read_bytes() == (bundle / name).read_bytes(), name


def test_progressive_resizing_trains_early_epochs_smaller(sample_data, tmp_path, capsys):
    plain = [s for s in TINY if not s.startswith("classifier.")] + ["classifier.enabled=false", "prior.epochs=2",
                                                                    "prior.size=96"]
    early = [*plain, "prior.early_size=64", "prior.early_fraction=0.5"]
    assert main(["fit", "--data", str(sample_data), "--out", str(tmp_path / "early"), *_sets(early)]) == 0
    assert "2 epochs (the first 1 at 64 px)" in capsys.readouterr().err
    assert main(["-q", "fit", "--data", str(sample_data), "--out", str(tmp_path / "plain"), *_sets(plain)]) == 0
    weights = [(tmp_path / name / "prior.safetensors").read_bytes() for name in ("early", "plain")]
    assert weights[0] != weights[1]
    assert _generate("--data", str(sample_data), "--bundle", str(tmp_path / "early"), "--out",
                     str(tmp_path / "maps")) == 0
    assert len(_maps(tmp_path / "maps")) == len(list((SAMPLE / "images").glob("ISIC_*")))


def test_generate_writes_isic_wsm_maps(sample_data, bundle, tmp_path):
    out = tmp_path / "wsm"
    assert _generate("--data", str(sample_data), "--bundle", str(bundle), "--out", str(out),
                     "--export-challenge") == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 40 and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        label_map = np.asarray(Image.open(out / row["path"]))
        image = Image.open(sample_data / "images" / f"{row['isic_id']}.jpg")
        assert label_map.shape == (image.height, image.width) == (row["height"], row["width"])
        assert set(np.unique(label_map)) <= {0, 1, 255}
        assert 0 <= row["confidence"] <= 1 and row["agreement"] is not None
        assert row["mask_used_in_fit"] in (True, False) and row["pipeline_sha256"]
        challenge = np.asarray(Image.open(out / "challenge" / f"{row['isic_id']}_segmentation.png"))
        assert set(np.unique(challenge)) <= {0, 255}
        assert ((challenge == 255) == (label_map == 1)).all()
    # a rerun finds everything complete
    assert _generate("--data", str(sample_data), "--bundle", str(bundle), "--out", str(out)) == 0
    assert _maps(out).keys() == {f"{r['isic_id']}.png" for r in rows}


def test_shards_merged_equal_an_unsharded_run(sample_data, bundle, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert _generate("--data", str(sample_data), "--bundle", str(bundle), "--out", str(whole)) == 0
    for shard in ("0/2", "1/2"):
        assert _generate("--data", str(sample_data), "--bundle", str(bundle), "--out", str(parts),
                         "--shard", shard) == 0
    assert main(["-q", "generate", "--out", str(parts), "--merge"]) == 0
    assert _maps(whole) == _maps(parts) and len(_maps(whole)) == 40
    drop = ["wsm_version"]
    a = pq.read_table(whole / "manifest.parquet").drop(drop).to_pylist()
    b = pq.read_table(parts / "manifest.parquet").drop(drop).to_pylist()
    assert a == b


def test_no_worker_processes_make_the_same_maps_in_the_main_process(sample_data, bundle, tmp_path):
    """-j means the same in every command: N worker processes, 0 none, auto chosen from the cores."""
    runs = {}
    for workers in ("1", "0", "auto"):
        out = tmp_path / f"j{workers}"
        assert main(["-q", "generate", "-j", workers, "--batch-size", "8", "--data", str(sample_data), "--bundle",
                     str(bundle), "--out", str(out), "--limit", "6"]) == 0
        runs[workers] = _maps(out)
    assert len(runs["1"]) == 6 and runs["0"] == runs["1"] == runs["auto"]
    assert main(["-q", "generate", "-j", "-1", "--data", str(sample_data), "--bundle", str(bundle), "--out",
                 str(tmp_path / "bad")]) == 2


def test_the_quality_model_learns_from_the_calibration_masks_only(sample_data, bundle, tmp_path, monkeypatch):
    """Every map gets a predicted Jaccard from a model fit learnt on its calibration masks: never on an image the
    report scores (those fit holds out) nor on the prior's training masks."""
    import json

    import wsm.fit.calibrate as calibrate
    from wsm.folders.bundle import load_bundle

    learnt_from = []
    real = calibrate.learn_quality

    def spy(samples, recipe):
        learnt_from.extend(s.isic_id for s in samples)
        return real(samples, recipe)

    monkeypatch.setattr(calibrate, "learn_quality", spy)
    out = tmp_path / "bundle"
    assert main(["-q", "fit", "--data", str(sample_data), "--out", str(out), *_sets(TINY)]) == 0
    provenance = json.loads((out / "provenance.json").read_text())
    calibration_ids = json.loads((out / "calibration.json").read_text())["isic_ids"]
    assert set(learnt_from) == set(calibration_ids) and len(calibration_ids) == 6   # cascaded ones twice
    assert not set(learnt_from) & set(provenance["evaluation_ids"])
    quality = load_bundle(out).recipe.quality
    assert quality.enabled and quality.n_images == 6
    assert (out / "pipeline.toml").read_bytes() == (bundle / "pipeline.toml").read_bytes()   # deterministic

    maps = tmp_path / "maps"
    assert _generate("--data", str(sample_data), "--bundle", str(out), "--out", str(maps)) == 0
    manifest = pq.read_table(maps / "manifest.parquet").to_pandas()
    assert manifest["predicted_jaccard"].between(0, 1).all()
    assert (manifest["predicted_fail"] == (manifest["predicted_jaccard"] < 0.65)).all()


def test_bad_images_fail_alone(bundle, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted((SAMPLE / "images").glob("*.jpg"))[:3]
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good[0].read_bytes()[:2000])
    (folder / "text.png").write_text("not an image")
    Image.open(good[1]).convert("CMYK").save(folder / "cmyk.jpg")
    Image.open(good[1]).convert("L").save(folder / "grey.png")
    Image.fromarray((np.asarray(Image.open(good[2]).convert("L"), dtype=np.uint16) * 257)).save(folder / "deep.png")
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")
    (folder / "..hidden.jpg").write_bytes(good[0].read_bytes())  # not a safe id: skipped
    out = tmp_path / "wsm"
    assert _generate("--images", str(folder), "--bundle", str(bundle), "--out", str(out)) == 1
    rows = {r["isic_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert {k for k, r in rows.items() if r["status"] == "failed"} == {"empty", "truncated", "text", "bomb"}
    assert "pixels" in rows["bomb"]["error"].lower() or "large" in rows["bomb"]["error"].lower()
    for ok in ("cmyk", "grey", "deep", *(p.stem for p in good)):
        assert rows[ok]["status"] == "ok" and (out / f"{ok}.png").exists()
    assert "..hidden" not in rows


def test_classic_needs_no_training(sample_data, tmp_path):
    bundle = tmp_path / "bundle"
    assert main(["-q", "fit", "--data", str(sample_data), "--out", str(bundle), "--pipeline", "classic",
                 "--set", "preprocess.working_size=96"]) == 0
    assert not (bundle / "classifier.safetensors").exists()
    assert _generate("--data", str(sample_data), "--bundle", str(bundle), "--out", str(tmp_path / "w"),
                     "--limit", "5") == 0
    assert len(_maps(tmp_path / "w")) == 5


def test_unknown_pipeline_key_is_a_clear_error(sample_data, tmp_path, capsys):
    code = main(["-q", "fit", "--data", str(sample_data), "--out", str(tmp_path), "--set", "crf.sharpness=2"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown key" in err and "bilateral_sxy" in err


@pytest.mark.slow
def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def test_generate_killed_then_rerun_is_complete(sample_data, bundle, tmp_path):
    out = tmp_path / "wsm"
    cmd = [sys.executable, "-m", "wsm", "-q", "generate", "--data", str(sample_data), "--bundle", str(bundle),
           "--out", str(out), "--workers", "1", "--batch-size", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("ISIC_*.png"))) < 8:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    workers = _children(proc.pid)
    assert workers, "generate should have started a worker process"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 8 <= len(list(out.glob("ISIC_*.png"))) < 40
    deadline = time.monotonic() + 20      # orphaned workers notice their parent is gone and exit
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "worker processes outlived generate"
    assert _generate("--data", str(sample_data), "--bundle", str(bundle), "--out", str(out)) == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sorted(r["isic_id"] for r in rows) == sorted(p.stem for p in (SAMPLE / "images").glob("*.jpg"))
    for row in rows:
        label_map = np.asarray(Image.open(out / row["path"]))    # every PNG decodes
        assert set(np.unique(label_map)) <= {0, 1, 255}
    assert not [p for p in out.iterdir() if p.name.startswith(".ISIC")], "temporary files left behind"


def test_a_map_weighted_zero_is_not_computed(bundle, tmp_path):
    import shutil

    from wsm.folders.bundle import load_bundle
    from wsm.mapping import label_image, prepare

    zero_cam = tmp_path / "bundle"
    shutil.copytree(bundle, zero_cam)
    toml = (zero_cam / "pipeline.toml").read_text()
    start = toml.index("[fusion.weights]")
    end = toml.index("\n[", start + 1)
    (zero_cam / "pipeline.toml").write_text(toml[:start] + "[fusion.weights]\ncam = 0.0\nprior = 1.0\n" + toml[end:])
    loaded = load_bundle(zero_cam)
    fast, full = loaded.load_models(), loaded.load_models(skip_unweighted=False)
    assert fast.classifier is None and fast.prior is not None and full.classifier is not None
    for path in sorted((SAMPLE / "images").glob("*.jpg"))[:3]:
        pre = prepare(path, loaded.recipe.preprocess)
        maps_fast, maps_full = fast.evidence([pre.image])[0], full.evidence([pre.image])[0]
        assert set(maps_fast) == {"prior"} and set(maps_full) == {"cam", "prior"}
        a, b = label_image(pre, maps_fast, loaded.recipe), label_image(pre, maps_full, loaded.recipe)
        assert (a.label_map == b.label_map).all() and a.confidence == b.confidence


def test_cpu_split_gives_the_workers_the_cores_the_networks_do_not_need():
    from wsm.generate.plan import cpu_split

    assert cpu_split(2, heavy_net_on_cpu=True) == (1, 1)
    assert cpu_split(16, heavy_net_on_cpu=True) == (8, 8)
    assert cpu_split(2, heavy_net_on_cpu=False) == (2, 1)
    assert cpu_split(16, heavy_net_on_cpu=False) == (16, 4)
    assert cpu_split(16, heavy_net_on_cpu=True, workers=4) == (4, 12)
    assert cpu_split(16, heavy_net_on_cpu=False, workers=0) == (0, 16)    # -j 0: all in the main process


def test_one_wsm_folder_holds_the_maps_of_one_bundle(sample_data, bundle, tmp_path, capsys):
    out, mixed = tmp_path / "wsm", tmp_path / "mixed"
    source = ["--data", str(sample_data), "--bundle", str(bundle), "--limit", "4"]
    assert _generate(*source, "--out", str(out)) == 0
    before = _maps(out)
    capsys.readouterr()
    # the same bundle with the prior's flip TTA makes other maps: refused into the same folder ...
    assert _generate(*source, "--out", str(out), "--set", "prior.flip_tta=true", "--limit", "8") == 2
    assert "another bundle or other settings" in capsys.readouterr().err
    assert _maps(out) == before
    # ... accepted into a new one, where the manifest says which settings made the maps
    assert _generate(*source, "--out", str(tmp_path / "tta"), "--set", "prior.flip_tta=true") == 0
    hashes = {pq.read_table(folder / "manifest.parquet")["pipeline_sha256"][0].as_py() for folder in
              (out, tmp_path / "tta")}
    assert len(hashes) == 2
    # settings that change what fit trained need a new fit
    assert _generate(*source, "--out", str(tmp_path / "x"), "--set", "prior.epochs=3") == 2
    assert "fit a new bundle" in capsys.readouterr().err
    # shards made with different settings are not merged
    assert _generate(*source, "--out", str(mixed), "--shard", "0/2") == 0
    assert _generate(*source, "--out", str(mixed), "--shard", "1/2", "--set", "prior.flip_tta=true") == 2
    assert main(["-q", "generate", "--out", str(mixed), "--merge"]) == 2
    assert not (mixed / "manifest.parquet").exists()


def test_a_cam_or_a_flip_tta_prior_on_the_cpu_is_heavy(bundle):
    import dataclasses

    from wsm.folders.bundle import load_bundle
    from wsm.mapping import MapModels
    from wsm.generate.plan import heavy_net_on_cpu

    recipe = load_bundle(bundle).recipe
    prior_only = MapModels(recipe)
    prior_only.prior = object()
    no_tta = dataclasses.replace(recipe, prior=dataclasses.replace(recipe.prior, flip_tta=False))
    with_tta = dataclasses.replace(recipe, prior=dataclasses.replace(recipe.prior, flip_tta=True))
    assert heavy_net_on_cpu(prior_only, with_tta, "cpu") and not heavy_net_on_cpu(prior_only, no_tta, "cpu")
    assert not heavy_net_on_cpu(prior_only, with_tta, "cuda") and not heavy_net_on_cpu(None, with_tta, "cpu")
    with_cam = MapModels(no_tta)
    with_cam.classifier = object()
    assert heavy_net_on_cpu(with_cam, no_tta, "cpu")


def test_images_without_an_official_mask_get_weak_maps_beside_those_with_one(bundle, tmp_path):
    from archive_client.importer import import_folders

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    chosen = sorted((SAMPLE / "images").glob("*.jpg"))[:6]
    for path in chosen:
        (images / path.name).write_bytes(path.read_bytes())
    for path in chosen[:2]:
        mask = SAMPLE / "masks" / f"{path.stem}_segmentation.png"
        (masks / mask.name).write_bytes(mask.read_bytes())
    data, out = tmp_path / "data", tmp_path / "wsm"
    import_folders(data, images=images, masks=masks, challenge="isic2018", split="train", progress=False)
    assert _generate("--data", str(data), "--bundle", str(bundle), "--out", str(out)) == 0
    rows = {r["isic_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert len(rows) == 6 and {r["status"] for r in rows.values()} == {"ok"}
    with_mask = {p.stem for p in chosen[:2]}
    assert all((rows[i]["agreement"] is not None) == (i in with_mask) for i in rows)


def test_merge_refuses_while_a_shard_is_missing(tmp_path, capsys):
    import shutil

    from wsm.folders.wsm_folder import WSM_MANIFEST, WsmFolder

    out = tmp_path / "wsm"
    out.mkdir()
    folder = WsmFolder(out)
    pq.write_table(WSM_MANIFEST.empty_table(), folder.part(0, 3))
    shutil.copy(folder.part(0, 3), folder.part(2, 3))
    assert main(["-q", "generate", "--out", str(out), "--merge"]) == 2
    assert "shard(s) 1/3 have not written their part" in capsys.readouterr().err
    assert not (out / "manifest.parquet").exists()


def test_refitting_a_bundle_takes_it_out_of_use_until_done_and_says_when_settings_changed(
        sample_data, bundle, tmp_path, monkeypatch, caplog):
    import shutil

    import wsm.fit.driver
    from wsm.folders.bundle import BundleError, load_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)      # with its work/ checkpoints: the refit only recalibrates
    other = [s for s in TINY if not s.startswith("calibration.")] + ["calibration.max_images=5"]
    with caplog.at_level("WARNING"):
        assert main(["-q", "fit", "--data", str(sample_data), "--out", str(copy), *_sets(other)]) == 0
    assert "fitted with other settings" in caplog.text
    assert load_bundle(copy).recipe.calibration.max_images == 5

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(wsm.fit.driver, "_calibrate", killed)
    assert main(["-q", "fit", "--data", str(sample_data), "--out", str(copy), *_sets(TINY)]) == 130
    with pytest.raises(BundleError, match="not a complete wsm bundle"):
        load_bundle(copy)


def test_no_entry_point_mixes_maps_made_otherwise(sample_data, bundle, tmp_path, capsys):
    import shutil

    out, other = tmp_path / "wsm", tmp_path / "other"
    source = ["--data", str(sample_data), "--bundle", str(bundle), "--limit", "4"]
    assert _generate(*source, "--out", str(out)) == 0
    before = _maps(out)
    # shards (and resumes) with other settings are refused before they write a map ...
    for shard in ("0/2", "1/2"):
        assert _generate(*source, "--out", str(out), "--shard", shard, "--set", "prior.flip_tta=true") == 2
        assert "another bundle or other settings" in capsys.readouterr().err
    assert _maps(out) == before and not list(out.glob("manifest-part-*"))
    # ... and so are shards whose folder the first shard claimed with other settings
    assert _generate(*source, "--out", str(other), "--shard", "0/2", "--set", "prior.flip_tta=true") == 0
    assert _generate(*source, "--out", str(other), "--shard", "1/2") == 2
    assert _generate(*source, "--out", str(other), "--shard", "1/2", "--set", "prior.flip_tta=true") == 0
    # merge refuses parts made otherwise than the folder's maps, even when the parts agree among themselves
    for part in other.glob("manifest-part-*"):
        shutil.copy(part, out / part.name)
    manifest = (out / "manifest.parquet").read_bytes()
    assert main(["-q", "generate", "--out", str(out), "--merge"]) == 2
    assert "another bundle or other settings" in capsys.readouterr().err
    assert (out / "manifest.parquet").read_bytes() == manifest


def test_a_killed_generate_loses_at_most_the_maps_in_flight(sample_data, bundle, tmp_path):
    import multiprocessing

    from wsm.generate import GenerateOptions, generate

    out = tmp_path / "wsm"
    options = GenerateOptions(out=out, bundle=bundle, data=sample_data, workers=1, batch_size=4, progress=False)
    run = multiprocessing.get_context("spawn").Process(target=generate, args=(options,))
    run.start()
    deadline = time.monotonic() + 120
    while run.is_alive() and time.monotonic() < deadline and len(list(out.glob("ISIC_*.png"))) < 6:
        time.sleep(0.02)
    assert run.is_alive(), "generate ended before it could be killed"
    run.kill()                                       # SIGKILL: no cleanup runs
    run.join()
    written = len(list(out.glob("ISIC_*.png")))
    summary = generate(options)
    assert summary.ok and summary.skipped >= written - 1, (written, summary.skipped)   # one worker: one in flight
