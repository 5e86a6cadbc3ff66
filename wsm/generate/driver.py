"""`wsm generate`: an ISIC_WSM label map for every image of a split, at archive scale.

- Streams the rows of the split (or of an image folder); nothing holds the whole archive in memory.
- Work is cut into batches of neighbouring ids, shared between machines by ``--shard i/n``
  (:mod:`wsm.generate.plan`): maps are byte-identical whether sharded or not.
- The networks run in this process (GPU with --device cuda); decoding, pre-processing, fusion, dense CRF,
  morphology and decision run in a pool of worker processes, each with one thread (:mod:`wsm.generate.workers`).
- Every map is written atomically, its row journalled (and flushed) as soon as it is written, so a kill loses at
  most the maps in flight; a rerun skips what is complete and finishes the rest.
- A WSM folder holds the maps of one bundle and one set of settings: the first run records its maker
  (:mod:`wsm.folders.wsm_folder`), and a run, resume, shard or merge that would mix in maps made otherwise is refused
  before any map is written.
- A bad image (corrupt, truncated, a decompression bomb, ...) gets a `failed` row with its reason; the run goes on.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from wsm import __version__
from wsm.config.pipeline import pipeline_hash
from wsm.config.recipe import recipe_key
from wsm.folders.bundle import Bundle, load_bundle
from wsm.generate import workers as W
from wsm.folders.wsm_folder import MAKER, REWRITE_WSM_MANIFEST, WSM_MANIFEST, WsmFolder, check_out_folder, claim_folder
from wsm.mapping import MapModels
from wsm.generate.plan import batches, cpu_split, folder_rows, heavy_net_on_cpu, plan_rows, usable_cores
from wsm.generate.resume import check_same_images, file_bytes, intact_maps, recorded_maps
from wsm.io.atomic import write_json
from wsm.io.journal import Journal, ManifestBuilder, fold_journal
from wsm.io.lock import exclusive_lock
from wsm.io.progress import progress
from wsm.io.tables import read_frame, table_columns
from wsm.selection import (SPLIT_CHOICES, DataError, read_manifest, read_truth, select_split, warn_unknown_ids,
                           with_truth)
from wsm.stages.quality import FAIL_BELOW

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateOptions:
    out: Path
    bundle: Path
    data: Path | None = None
    images: Path | None = None          # any folder of images instead of a DATA split
    split: str = "all"
    shard: tuple[int, int] = (0, 1)     # (index, count)
    device: str = "cpu"
    workers: int | None = None          # CPU worker processes (0: none, all in the main process; None: cpu_split's)
    batch_size: int = 16
    export_challenge: bool = False      # also write challenge/ISIC_x_segmentation.png (0/255)
    prefer_official: bool = False       # where an official mask exists, write it (source "official")
    limit: int = 0                      # at most this many images of the shard (0: all)
    only_ids: frozenset[str] = frozenset()   # restrict to these ids (e.g. a held-out fold); empty: no restriction
    overrides: tuple[str, ...] = ()     # settings that change no training, e.g. "prior.flip_tta=false"
    image_type: str | None = None       # the type of images whose type DATA does not record (--images: all)
    progress: bool = True


@dataclass
class GenerateSummary:
    out: Path
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: dict = field(default_factory=dict)
    skipped_types: Counter = field(default_factory=Counter)   # image type -> images given no map ([image_types])
    seconds: float = 0.0
    manifest: Path | None = None
    data: Path | None = None           # the DATA folder the images came from (None: --images)
    shards: int = 1
    quality: dict | None = None        # predicted_quality of the manifest this run wrote

    @property
    def ok(self) -> bool:
        return not self.failed

    def lines(self) -> list[str]:
        rate = self.done / self.seconds if self.seconds else 0.0
        out = [f"{self.total} images: {self.done} maps written, {self.skipped} already complete, "
               f"{len(self.failed)} failed ({rate:.1f} images/s)", f"manifest: {self.manifest}"]
        out += [f"  failed {k}: {v}" for k, v in list(self.failed.items())[:20]]
        if self.skipped_types:
            types = ", ".join(f"{t} {n}" for t, n in sorted(self.skipped_types.items()))
            out.append(f"no map, by the pipeline's [image_types] skip (status skipped in the manifest): {types}")
        if self.quality:
            q = self.quality
            zero = (f", {q['zero']} of them predicted 0 (no lesion found, or a map that fails its image type's "
                    "[framing] check)") if q.get("zero") else ""
            out.append(f"predicted Jaccard of the {q['n']} maps: median {q['median']:.2f} (quartiles {q['q1']:.2f}-"
                       f"{q['q3']:.2f}); {q['flagged']} predicted below {FAIL_BELOW} are flagged (predicted_fail in "
                       f"the manifest{zero}): look at those first")
        if self.shards > 1:
            out.append(f"next: when every shard is done, wsm generate --out {self.out} --merge")
        elif self.data is not None:
            out.append(f"next: wsm report --data {self.data} --maps {self.out} --out REPORT")
        return out


# --------------------------------------------------------------------------------------------- the driver

class _Recorder:
    """Journals a map's manifest row (flushed) and adds it to the manifest as soon as the map is written.

    Maps are recorded from the worker pool's callback thread (:meth:`when_written`), failed images from the main
    thread; a lock keeps the two apart, and an error in the callback thread is raised again in the main one.
    """

    def __init__(self, journal: Journal, builder: ManifestBuilder, provenance: dict, fit_ids: frozenset[str],
                 image_bytes: dict[str, int | None], image_types: dict[str, str | None]):
        self.journal, self.builder, self.provenance, self.fit_ids = journal, builder, provenance, fit_ids
        self.image_bytes, self.image_types = image_bytes, image_types
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    def __call__(self, row: dict) -> None:
        row = {**self.provenance, **row, "mask_used_in_fit": row["isic_id"] in self.fit_ids,
               "image_bytes": self.image_bytes.get(row["isic_id"]), "image_type": self.image_types.get(row["isic_id"])}
        with self.lock:
            self.journal.append(row)
            self.builder.add(row)

    def when_written(self, future: Future) -> None:
        """A done-callback for a future that writes a map; a failed one is recorded by the main thread."""
        if future.cancelled() or future.exception() is not None:
            return
        try:
            self(future.result())
        except BaseException as err:  # noqa: BLE001 - the pool would only log it; the main thread raises it
            self.error = err

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self) -> None:
        with self.lock:
            self.builder.write()
            self.journal.clear()


def _selection(opts: GenerateOptions) -> str:
    where = f"--images {opts.images}" if opts.images is not None else f"--split {opts.split} of {opts.data}"
    return where + (f", --only with {len(opts.only_ids)} ids" if opts.only_ids else "")


def _source_rows(opts: GenerateOptions) -> pd.DataFrame:
    """The selected images (before sharding); an empty selection is an error that says what there is."""
    if opts.images is not None:
        rows = folder_rows(Path(opts.images))
        where = f"{len(rows)} images in {opts.images}"
    else:
        if opts.data is None:
            raise DataError("give --data DATA (with --split) or --images DIR")
        data = Path(opts.data)
        every = with_truth(read_manifest(data), read_truth(data))
        rows = select_split(every, opts.split)
        rows["file"] = [str(data / f) for f in rows["file"]]
        rows["mask_file"] = [str(data / m) if isinstance(m, str) else None for m in rows["mask_file"]]
        where = "DATA has " + ", ".join(f"{name} {len(select_split(every, name))}" for name in SPLIT_CHOICES)
    if opts.only_ids:
        warn_unknown_ids("--only", opts.only_ids, rows["isic_id"], opts.images or f"split {opts.split!r}")
        rows = rows[rows["isic_id"].isin(opts.only_ids)]
    if rows.empty:
        raise DataError(f"no image selected ({_selection(opts)}); {where}")
    recorded = rows["image_type"] if "image_type" in rows.columns else pd.Series(None, index=rows.index, dtype=object)
    rows = rows.assign(image_type=recorded.where(recorded.notna() & (recorded != ""), opts.image_type))
    return rows[["isic_id", "file", "mask_file", "image_type"]]


def generate(opts: GenerateOptions) -> GenerateSummary:
    """Label maps for the selected images into opts.out; see the module doc."""
    import torch

    started = time.perf_counter()
    out = Path(opts.out)
    check_out_folder(out, data=opts.data, images=opts.images, bundle=opts.bundle)
    bundle = load_bundle(opts.bundle).with_inference_overrides(opts.overrides)
    selected = _source_rows(opts)           # wrong inputs fail here, before WSM exists
    out.mkdir(parents=True, exist_ok=True)
    folder = WsmFolder(out)
    manifest_path = folder.part(*opts.shard)
    summary = GenerateSummary(out, manifest=manifest_path, data=None if opts.images is not None else opts.data,
                              shards=opts.shard[1])
    with exclusive_lock(out, f"generate-{opts.shard[0]}-of-{opts.shard[1]}.lock"):
        journal = Journal(folder.journal(*opts.shard), flush_s=0.0)
        fold_journal(journal, manifest_path, WSM_MANIFEST, REWRITE_WSM_MANIFEST)
        rows = plan_rows(selected, opts.shard, opts.batch_size)
        if opts.limit:
            rows = rows.head(opts.limit)
        provenance, fit_ids = _provenance(bundle)
        claim_folder(folder, tuple(provenance[column] for column in MAKER))
        image_bytes = {i: file_bytes(f) for i, f in zip(rows["isic_id"], rows["file"])}
        recorded = recorded_maps(manifest_path)
        check_same_images(folder, recorded, image_bytes, dict(zip(rows["isic_id"], rows["file"])))
        write_json(folder.bundle_file, {"bundle": str(Path(opts.bundle).resolve()), "pipeline": bundle.recipe.name,
                                        "fit_mask_ids": sorted(fit_ids)})
        done = intact_maps(folder, recorded, set(rows["isic_id"]))
        summary.total, summary.skipped = len(rows), int(rows["isic_id"].isin(done).sum())
        rows = rows[~rows["isic_id"].isin(done)]
        networks = bundle.recipe.method != "classic" and len(rows) > 0
        models = bundle.load_models(opts.device) if networks else None
        rows = rows.assign(recipe=[recipe_key(bundle.recipe, t) for t in rows["image_type"]])   # None: no map
        box_prompts = any(bundle.recipes[key].box_prompt.enabled for key in set(rows["recipe"].dropna()))
        heavy = heavy_net_on_cpu(models, bundle.recipe, opts.device, box_prompts)
        workers, threads = cpu_split(usable_cores(), heavy, opts.workers)
        threads_before = torch.get_num_threads()      # given back at the end: a caller's later work is unchanged
        torch.set_num_threads(threads)
        builder = ManifestBuilder(manifest_path, WSM_MANIFEST, remedy=REWRITE_WSM_MANIFEST)
        image_types = {i: t if isinstance(t, str) else None for i, t in zip(rows["isic_id"], rows["image_type"])}
        record = _Recorder(journal, builder, provenance, fit_ids, image_bytes, image_types)
        bar = progress(total=summary.total, initial=summary.skipped, unit="img", desc="generate",
                       enabled=opts.progress)
        try:
            for row in _run(rows, bundle, models, opts, workers, out, record):
                record.check()
                if row["status"] == "ok":     # recorded when its map was written
                    summary.done += 1
                elif row["status"] == "skipped":
                    record(row)
                    summary.skipped_types[image_types[row["isic_id"]]] += 1
                else:
                    record(row)
                    summary.failed[row["isic_id"]] = row["error"]
                bar.update(1)
            record.check()
        finally:
            bar.close()
            record.write()
            torch.set_num_threads(threads_before)
            summary.seconds = time.perf_counter() - started
    summary.quality = predicted_quality(manifest_path)
    return summary


def predicted_quality(manifest: Path) -> dict | None:
    """How the maps of a manifest are predicted to score: n, quartiles of predicted_jaccard and how many are flagged
    to fail; None when no map has a prediction (a bundle without a quality model)."""
    if not manifest.exists() or "predicted_jaccard" not in table_columns(manifest, REWRITE_WSM_MANIFEST):
        return None         # a manifest from before wsm predicted quality (nothing new was written into it)
    predicted = read_frame(manifest, ["predicted_jaccard"], REWRITE_WSM_MANIFEST)["predicted_jaccard"].dropna()
    if predicted.empty:
        return None
    q1, median, q3 = (float(v) for v in predicted.quantile([0.25, 0.5, 0.75]))
    return {"n": int(len(predicted)), "q1": q1, "median": median, "q3": q3,
            "flagged": int((predicted < FAIL_BELOW).sum()), "zero": int((predicted == 0).sum())}


def _provenance(bundle: Bundle) -> tuple[dict, frozenset[str]]:
    """The provenance columns of every row of this run, and the ids whose official mask fit used."""
    hashes = bundle.model_hashes()
    return ({"pipeline_sha256": pipeline_hash(bundle.resolved),
             "model_sha256": ";".join(f"{k.split('.')[0]}={v}" for k, v in sorted(hashes.items())) or None,
             "wsm_version": __version__}, frozenset(bundle.provenance.get("fit_mask_ids", [])))


def _run(rows: pd.DataFrame, bundle: Bundle, models: MapModels | None, opts: GenerateOptions, workers: int,
         out: Path, record: _Recorder) -> Iterator[dict]:
    """Yield one manifest row per image, in no particular order, with bounded work in flight; ``record`` gets the
    row of each map as soon as the map is written."""
    window = max(2, 2 * workers)     # batches prepared ahead of the networks
    recipes = bundle.recipes
    with W.worker_pool(workers, recipes, out, opts.export_challenge) as pool:
        prepared: deque = deque()
        finishing: set[Future] = set()
        pending = iter(batches(rows))

        def refill() -> None:
            while len(prepared) < window and (group := next(pending, None)) is not None:
                prepared.append([(r, _submit_one(pool, r, opts, record)) for r in group.itertuples()])

        refill()
        while prepared:
            batch = prepared.popleft()
            refill()
            weak = []
            for row, future in batch:
                try:
                    result = future.result()
                except Exception as err:  # noqa: BLE001 - any failure of one image is recorded, never fatal
                    yield W.failed(row.isic_id, err)
                    continue
                if isinstance(result, dict):          # --prefer-official (written) or a type with no map
                    yield result
                else:
                    weak.append((row, result))
            if weak:
                pres, maps = _evidence(models, [pre for _, pre in weak], [recipes[row.recipe] for row, _ in weak])
                for (row, _), pre, evidence in zip(weak, pres, maps):
                    isic_id = row.isic_id
                    future = pool.submit(W.finish, isic_id, pre, evidence, row.mask_file, row.recipe)
                    future.isic_id = isic_id
                    future.add_done_callback(record.when_written)
                    finishing.add(future)
            while len(finishing) > window * opts.batch_size or (not prepared and finishing):
                done, finishing = wait(finishing, return_when=FIRST_COMPLETED)
                yield from _collect(done)
            done = {f for f in finishing if f.done()}
            finishing -= done
            yield from _collect(done)


def _evidence(models: MapModels | None, pres: list, recipes: list) -> tuple[list, list[dict]]:
    """The networks' maps of a batch, cascaded and box-prompted where an image's recipe says so, with the images
    they are of (a cascaded image's crop)."""
    if models is None:
        return [pre._replace(detail=None) for pre in pres], [{} for _ in pres]
    return models.cascaded_evidence(pres, recipes)


def _submit_one(pool, row, opts: GenerateOptions, record: _Recorder) -> Future:
    if not isinstance(row.recipe, str):           # a type the pipeline makes no map for
        skipped: Future = Future()
        skipped.set_result(W.skipped(row.isic_id, row.image_type))
        return skipped
    if opts.prefer_official and isinstance(row.mask_file, str):
        future = pool.submit(W.official, row.isic_id, row.mask_file)
        future.add_done_callback(record.when_written)
        return future
    return pool.submit(W.prepare_image, row.file, row.recipe)


def _collect(futures) -> Iterator[dict]:
    for future in futures:
        try:
            yield future.result()
        except Exception as err:  # noqa: BLE001
            yield W.failed(future.isic_id, err)


