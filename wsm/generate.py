"""`wsm generate`: an ISIC_WSM label map for every image of a split, at archive scale.

- Streams the rows of the split (or of an image folder); nothing holds the whole archive in memory.
- Work is cut into batches of images whose ids fall in the same block of `batch_size` ids; `--shard i/n` takes
  the blocks with block % n == i, so n machines share the archive with no coordination and every image sees
  the same batch, hence byte-identical maps, whether sharded or not.
- The networks run in this process (GPU with --device cuda); decoding, pre-processing, fusion, dense CRF,
  morphology and decision run in a pool of worker processes, each with one thread.
- Every map is written atomically, its row journalled (and flushed) as soon as it is written, so a kill loses at
  most the maps in flight; a rerun skips what is complete and finishes the rest.
- A WSM folder holds the maps of one bundle and one set of settings: the first run records its maker in
  `.wsm/maker.json`, and a run, resume, shard or merge that would mix in maps made otherwise is refused before
  any map is written.
- A bad image (corrupt, truncated, a decompression bomb, ...) gets a `failed` row with its reason; the run goes on.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from archive_client.atomic import fsync_dir
from archive_client.journal import Journal, ManifestBuilder, fold_journal
from archive_client.layout import exclusive_lock
from archive_client.manifest import merge_tables, write_table_atomic
from wsm import __version__
from wsm.bundle import Bundle, load_bundle
from wsm.data import (ID_PATTERN, DataError, read_manifest, read_truth, select_split, warn_unknown_ids,
                      with_truth)
from wsm.maps import MapModels
from wsm.outputs import WSM_MANIFEST, part_name
from wsm.pipeline import pipeline_hash

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
_ISIC = re.compile(r"ISIC_([0-9]{7})")


@dataclass(frozen=True)
class GenerateOptions:
    out: Path
    bundle: Path
    data: Path | None = None
    images: Path | None = None          # any folder of images instead of a DATA split
    split: str = "all"
    shard: tuple[int, int] = (0, 1)     # (index, count)
    device: str = "cpu"
    workers: int = 0                    # CPU worker processes (0: chosen by cpu_split)
    batch_size: int = 16
    export_challenge: bool = False      # also write challenge/ISIC_x_segmentation.png (0/255)
    prefer_official: bool = False       # where an official mask exists, write it (source "official")
    limit: int = 0                      # at most this many images of the shard (0: all)
    only_ids: frozenset[str] = frozenset()   # restrict to these ids (e.g. a held-out fold); empty: no restriction
    overrides: tuple[str, ...] = ()     # settings that change no training, e.g. "prior.flip_tta=false"
    progress: bool = True


@dataclass
class GenerateSummary:
    out: Path
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: dict = field(default_factory=dict)
    seconds: float = 0.0
    manifest: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def lines(self) -> list[str]:
        rate = self.done / self.seconds if self.seconds else 0.0
        out = [f"{self.total} images: {self.done} maps written, {self.skipped} already complete, "
               f"{len(self.failed)} failed ({rate:.1f} images/s)", f"manifest: {self.manifest}"]
        out += [f"  failed {k}: {v}" for k, v in list(self.failed.items())[:20]]
        return out


# ---------------------------------------------------------------------------------------------- work units

def parse_shard(text: str | None) -> tuple[int, int]:
    """`i/n` from the flag, else RANK/WORLD_SIZE (torchrun) or SLURM_ARRAY_TASK_ID/COUNT, else 0/1."""
    if text:
        match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if not match or not 0 <= int(match[1]) < int(match[2]):
            raise DataError(f"--shard {text!r} should be i/n with 0 <= i < n, e.g. 0/4")
        return int(match[1]), int(match[2])
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
    return 0, 1


def block_of(item_id: str, position: int, batch_size: int) -> int:
    """The batch block: ISIC ids by number (stable whatever else is in the folder), other names by position."""
    match = _ISIC.fullmatch(item_id)
    return (int(match[1]) if match else position) // batch_size


def folder_rows(folder: Path) -> pd.DataFrame:
    """Rows for a folder of images: an id from each safe file name (others are refused with a reason)."""
    if not folder.is_dir():
        raise DataError(f"--images {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    bad = [p.name for p in files if not ID_PATTERN.fullmatch(p.stem)]
    if bad:
        log.warning("skipping %d files whose names are not safe ids (letters, digits, _ . -): %s", len(bad), bad[:5])
    files = [p for p in files if ID_PATTERN.fullmatch(p.stem)]
    return pd.DataFrame({"isic_id": [p.stem for p in files], "file": [str(p.resolve()) for p in files],
                         "mask_file": [None] * len(files)})


def plan_rows(rows: pd.DataFrame, shard: tuple[int, int], batch_size: int) -> pd.DataFrame:
    rows = rows.sort_values("isic_id", ignore_index=True)
    rows["block"] = [block_of(i, n, batch_size) for n, i in enumerate(rows["isic_id"])]
    return rows[rows["block"] % shard[1] == shard[0]].reset_index(drop=True)


def batches(rows: pd.DataFrame) -> Iterator[pd.DataFrame]:
    for _, group in rows.groupby("block", sort=True):
        yield group


# --------------------------------------------------------------------------------- worker-process functions

_WORKER: dict = {}


def _init_worker(recipe, out: Path, export_challenge: bool) -> None:
    import cv2

    cv2.setNumThreads(1)
    _WORKER.update(recipe=recipe, out=Path(out), export_challenge=export_challenge)
    threading.Thread(target=_exit_with_parent, daemon=True, name="wsm-parent-watch").start()


def _exit_with_parent() -> None:
    """A worker whose parent was killed (SIGKILL, the OOM killer) exits too, instead of idling forever."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)


def _prepare(path: str):
    from wsm.maps import prepare

    return prepare(path, _WORKER["recipe"].preprocess)


def _write_maps(isic_id: str, label_map: np.ndarray) -> str:
    from wsm.imageio import write_label_png

    out = _WORKER["out"]
    write_label_png(out / f"{isic_id}.png", label_map)
    if _WORKER["export_challenge"]:
        write_label_png(out / "challenge" / f"{isic_id}_segmentation.png",
                        np.where(label_map == 1, 255, 0).astype(np.uint8))
    return f"{isic_id}.png"


def _agreement(label_map: np.ndarray, mask_path: str | None) -> float | None:
    """Jaccard of the map against the image's official mask; None without one (pandas may hand a missing path
    over as NaN) or when the mask cannot be read: the map itself is fine either way."""
    if not isinstance(mask_path, str) or not mask_path:
        return None
    from wsm.errors import WsmError
    from wsm.imageio import read_mask
    from wsm.metrics import confusion_counts, image_metrics

    try:
        truth = read_mask(mask_path)
    except (OSError, ValueError, WsmError) as err:
        log.warning("%s: official mask unreadable (%s); agreement left empty", mask_path, err)
        return None
    if truth.shape != label_map.shape:
        log.warning("%s: official mask %s differs from the image size %s", mask_path, truth.shape, label_map.shape)
        return None
    return image_metrics(confusion_counts(truth > 128, label_map == 1))["jaccard"]


def _stats(label_map: np.ndarray) -> dict:
    n = label_map.size
    return {"width": label_map.shape[1], "height": label_map.shape[0],
            "lesion_fraction": float((label_map == 1).sum() / n),
            "uncertain_fraction": float((label_map == 255).sum() / n)}


def _finish(isic_id: str, pre, maps: dict, mask_path: str | None) -> dict:
    from wsm.maps import label_image
    from wsm.stages.refine import to_original_size

    labelled = label_image(pre, maps, _WORKER["recipe"])
    label_map = to_original_size(labelled.label_map, pre.original_size)
    agreement = _agreement(label_map, mask_path)
    path = _write_maps(isic_id, label_map)
    return {"isic_id": isic_id, "path": path, **_stats(label_map), "confidence": labelled.confidence,
            "source": "weak", "agreement": agreement, "status": "ok"}


def _official(isic_id: str, mask_path: str) -> dict:
    from wsm.imageio import read_mask

    label_map = (read_mask(mask_path) > 128).astype(np.uint8)
    path = _write_maps(isic_id, label_map)
    return {"isic_id": isic_id, "path": path, **_stats(label_map), "confidence": 1.0, "source": "official",
            "agreement": 1.0, "status": "ok"}


# --------------------------------------------------------------------------------------------- the driver

def _failed(isic_id: str, err: BaseException) -> dict:
    return {"isic_id": isic_id, "path": None, "source": "failed", "status": "failed",
            "error": f"{err.__class__.__name__}: {err}"[:500]}


def _done_ids(previous: pa.Table, out: Path) -> set[str]:
    """Ids whose map is listed as ok and is on disk (a rerun skips them)."""
    return {r["isic_id"] for r in previous.select(["isic_id", "path", "status"]).to_pylist()
            if r["status"] == "ok" and r["path"] and (out / r["path"]).exists()}


_MAKER = ("pipeline_sha256", "model_sha256")   # what made a map: the resolved pipeline and the weights
MAKER_FILE = "maker.json"                      # in WSM/.wsm: the maker of the folder's maps, recorded by the first run


def map_makers(tables: list[pa.Table]) -> set[tuple]:
    """The (pipeline, models) pairs that made the ok maps of these manifest tables."""
    makers = set()
    for table in tables:
        ok = table.filter(pc.equal(table["status"], "ok"))
        makers |= set(zip(*(ok[column].to_pylist() for column in _MAKER)))
    return makers


def known_makers(out: Path) -> set[tuple]:
    """Every maker ``out`` knows of: the recorded one, and those of the ok maps that manifest.parquet, every shard's
    part and every killed run's journal list (folders written before makers were recorded have only these)."""
    manifests = [out / "manifest.parquet", *sorted(out.glob("manifest-part-*-of-*.parquet"))]
    makers = map_makers([pq.read_table(p, columns=["status", *_MAKER]) for p in manifests if p.exists()])
    for journal in sorted((out / ".wsm").glob("generate-*.jsonl")):
        makers |= {tuple(r.get(c) for c in _MAKER) for r in Journal(journal).replay() if r.get("status") == "ok"}
    recorded = out / ".wsm" / MAKER_FILE
    if recorded.exists():
        makers.add(tuple(json.loads(recorded.read_text(encoding="utf8"))))
    return makers


def check_one_maker(makers: set[tuple], out: Path) -> None:
    """Refuse a WSM folder whose maps would come from more than one bundle or set of settings (``makers``, with
    this run's when it adds maps): a resumed or sharded run never mixes two kinds of map."""
    if len(makers) > 1:
        raise DataError(f"{out} holds maps made by another bundle or other settings (pipeline, models: "
                        f"{', '.join(map(str, sorted(makers, key=str)))}): write to a new --out, or delete {out} to "
                        "start again")


def claim_folder(out: Path, maker: tuple) -> None:
    """Record ``maker`` as the maker of ``out``'s maps, unless another run recorded one first, and refuse to go on
    when they differ. The record is linked into place, so of two shards started together only one can win."""
    check_one_maker(known_makers(out) | {maker}, out)
    recorded = out / ".wsm" / MAKER_FILE
    tmp = recorded.with_name(f".{MAKER_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(list(maker)), encoding="utf8")
    try:
        os.link(tmp, recorded)
        fsync_dir(recorded.parent)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    check_one_maker({maker, tuple(json.loads(recorded.read_text(encoding="utf8")))}, out)


class _Recorder:
    """Journals a map's manifest row (flushed) and adds it to the manifest as soon as the map is written.

    Maps are recorded from the worker pool's callback thread (:meth:`when_written`), failed images from the main
    thread; a lock keeps the two apart, and an error in the callback thread is raised again in the main one.
    """

    def __init__(self, journal: Journal, builder: ManifestBuilder, provenance: dict, fit_ids: frozenset[str]):
        self.journal, self.builder, self.provenance, self.fit_ids = journal, builder, provenance, fit_ids
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    def __call__(self, row: dict) -> None:
        row = {**self.provenance, **row, "mask_used_in_fit": row["isic_id"] in self.fit_ids}
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
    if opts.images is not None:
        return folder_rows(Path(opts.images))
    if opts.data is None:
        raise DataError("give --data DATA (with --split) or --images DIR")
    data = Path(opts.data)
    rows = select_split(with_truth(read_manifest(data), read_truth(data)), opts.split)
    rows["file"] = [str(data / f) for f in rows["file"]]
    rows["mask_file"] = [str(data / m) if isinstance(m, str) else None for m in rows["mask_file"]]
    return rows[["isic_id", "file", "mask_file"]]


def usable_cores() -> int:
    """The cores this process may run on (a Slurm job's or a container's share, not the whole node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 2


def cpu_split(cores: int, heavy_net_on_cpu: bool, workers: int = 0) -> tuple[int, int]:
    """(worker processes, torch threads of the main process) for ``cores`` CPU cores.

    The workers run decode, CRF, morphology and PNG (~100 ms per image on one core); the main process runs the
    networks. A heavy network on the CPU (the CAM: forward + backward on 4 flipped views; the prior with flip
    TTA: 4 forwards, ~110 ms) costs as much as the workers' stages, so the networks get half the cores; a plain
    prior (~30 ms) or a GPU leaves most of the CPU to the workers (measured on 2 cores: plain prior 12.2 images/s
    with 2 workers against 7.0 with 1; TTA prior 300 images in 52.7 s with 1 worker against 56.0 s with 2;
    docs/RESULTS.md).
    """
    if not workers:
        workers = max(1, cores // 2) if heavy_net_on_cpu else cores
    threads = max(1, cores - workers) if heavy_net_on_cpu else max(1, cores // 4)
    return workers, threads


def heavy_net_on_cpu(models: MapModels | None, recipe, device: str) -> bool:
    """Whether the networks this run computes cost the CPU as much as the workers' stages (see cpu_split)."""
    if models is None or device.startswith("cuda"):
        return False
    return models.classifier is not None or (models.prior is not None and recipe.prior.flip_tta)


def generate(opts: GenerateOptions) -> GenerateSummary:
    """Label maps for the selected images into opts.out; see the module doc."""
    import torch

    started = time.perf_counter()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(opts.bundle).with_inference_overrides(opts.overrides)
    shard_tag = f"{opts.shard[0]}-of-{opts.shard[1]}"
    manifest_path = out / part_name(*opts.shard)
    summary = GenerateSummary(out, manifest=manifest_path)
    with exclusive_lock(out, f"generate-{shard_tag}.lock"):
        journal = Journal(out / ".wsm" / f"generate-{shard_tag}.jsonl", flush_s=0.0)
        fold_journal(journal, manifest_path, WSM_MANIFEST)
        rows = _source_rows(opts)
        if opts.only_ids:
            warn_unknown_ids("--only", opts.only_ids, rows["isic_id"], opts.images or f"split {opts.split!r}")
            rows = rows[rows["isic_id"].isin(opts.only_ids)]
        if rows.empty:
            log.warning("nothing to do: no image selected (%s)", _selection(opts))
        rows = plan_rows(rows, opts.shard, opts.batch_size)
        if opts.limit:
            rows = rows.head(opts.limit)
        provenance, fit_ids = _provenance(bundle)
        claim_folder(out, tuple(provenance[column] for column in _MAKER))
        previous = (pq.read_table(manifest_path, columns=["isic_id", "path", "status"])
                    if manifest_path.exists() else WSM_MANIFEST.empty_table())
        done = _done_ids(previous, out)
        summary.total, summary.skipped = len(rows), int(rows["isic_id"].isin(done).sum())
        rows = rows[~rows["isic_id"].isin(done)]
        networks = bundle.recipe.method != "classic" and len(rows) > 0
        models = bundle.load_models(opts.device) if networks else None
        heavy = heavy_net_on_cpu(models, bundle.recipe, opts.device)
        workers, threads = cpu_split(usable_cores(), heavy, opts.workers)
        torch.set_num_threads(threads)
        record = _Recorder(journal, ManifestBuilder(manifest_path, WSM_MANIFEST), provenance, fit_ids)
        bar = tqdm(total=summary.total, initial=summary.skipped, unit="img", desc="generate",
                   disable=not opts.progress)
        try:
            for row in _run(rows, bundle, models, opts, workers, out, record):
                record.check()
                if row["status"] == "ok":     # recorded when its map was written
                    summary.done += 1
                else:
                    record(row)
                    summary.failed[row["isic_id"]] = row["error"]
                bar.update(1)
            record.check()
        finally:
            bar.close()
            record.write()
            summary.seconds = time.perf_counter() - started
    return summary


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
    context = multiprocessing.get_context("spawn")
    window = max(2, 2 * workers)     # batches prepared ahead of the networks
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(bundle.recipe, out, opts.export_challenge)) as pool:
        prepared: deque = deque()
        finishing: set[Future] = set()
        pending = iter(batches(rows))

        def refill() -> None:
            while len(prepared) < window and (group := next(pending, None)) is not None:
                prepared.append([(r.isic_id, r.mask_file, _submit_one(pool, r, opts, record))
                                 for r in group.itertuples()])

        refill()
        while prepared:
            batch = prepared.popleft()
            refill()
            weak = []
            for isic_id, mask_file, future in batch:
                try:
                    result = future.result()
                except Exception as err:  # noqa: BLE001 - any failure of one image is recorded, never fatal
                    yield _failed(isic_id, err)
                    continue
                if isinstance(result, dict):          # --prefer-official: already written
                    yield result
                else:
                    weak.append((isic_id, mask_file, result))
            if weak:
                maps = models.evidence([pre.image for _, _, pre in weak]) if models else [{} for _ in weak]
                for (isic_id, mask_file, pre), evidence in zip(weak, maps):
                    future = pool.submit(_finish, isic_id, pre, evidence, mask_file)
                    future.isic_id = isic_id
                    future.add_done_callback(record.when_written)
                    finishing.add(future)
            while len(finishing) > window * opts.batch_size or (not prepared and finishing):
                done, finishing = wait(finishing, return_when=FIRST_COMPLETED)
                yield from _collect(done)
            done = {f for f in finishing if f.done()}
            finishing -= done
            yield from _collect(done)


def _submit_one(pool, row, opts: GenerateOptions, record: _Recorder) -> Future:
    if opts.prefer_official and isinstance(row.mask_file, str):
        future = pool.submit(_official, row.isic_id, row.mask_file)
        future.add_done_callback(record.when_written)
        return future
    return pool.submit(_prepare, row.file)


def _collect(futures) -> Iterator[dict]:
    for future in futures:
        try:
            yield future.result()
        except Exception as err:  # noqa: BLE001
            yield _failed(future.isic_id, err)


def check_all_shards(out: Path, parts: list[Path]) -> None:
    """Refuse to merge unless every shard of one count wrote its part (a missing one would lose its images)."""
    found = [re.fullmatch(r"manifest-part-(\d+)-of-(\d+)\.parquet", p.name) for p in parts]
    counts = {int(m.group(2)) for m in found if m}
    if len(counts) != 1:
        raise DataError(f"{out} holds parts of runs with different shard counts {sorted(counts)}: keep one run's")
    count = counts.pop()
    missing = sorted(set(range(count)) - {int(m.group(1)) for m in found if m})
    if missing:
        raise DataError(f"{out}: shard(s) {', '.join(f'{i}/{count}' for i in missing)} have not written their part; "
                        f"run `wsm generate ... --shard {missing[0]}/{count}` (same command as the others) first")


def merge_parts(out: Path) -> Path:
    """Join the shards' manifest parts into WSM/manifest.parquet (one row per image)."""
    out = Path(out)
    parts = sorted(out.glob("manifest-part-*-of-*.parquet"))
    if not parts:
        raise DataError(f"{out} has no manifest-part-*.parquet files to merge")
    check_all_shards(out, parts)
    check_one_maker(known_makers(out), out)
    merged = WSM_MANIFEST.empty_table()
    tables = [pq.read_table(part) for part in parts]
    for table in tables:
        merged = merge_tables(merged, table, ("isic_id",))
    write_table_atomic(merged, out / "manifest.parquet")
    return out / "manifest.parquet"
