"""What `wsm generate`'s worker processes do: decode and pre-process an image, then refine, decide and write its
map (each worker runs one thread; the networks run in the main process between the two)."""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from wsm.config.recipe import DEFAULT_TYPE
from wsm.errors import disk_error
from wsm.folders.wsm_folder import WsmFolder
from wsm.stages.quality import FAIL_BELOW

log = logging.getLogger(__name__)


_WORKER: dict = {}


class _SpawnIgnoringCtrlC(multiprocessing.context.SpawnContext):
    """The spawn start method, with Ctrl-C held back from the new process from its first instruction until its
    initializer ignores it (a blocked signal stays blocked across fork and exec): a terminal sends Ctrl-C to the
    workers too, and only the parent should answer it. The parent only blocks it in the starting thread, for the
    moment of the start: a Ctrl-C meanwhile still reaches it (ignoring it there instead would lose it)."""

    class Process(multiprocessing.context.SpawnProcess):
        def start(self) -> None:
            if not hasattr(signal, "pthread_sigmask"):         # not POSIX: the initializer's ignoring must do
                return super().start()
            before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                super().start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, before)


class InProcess(Executor):
    """The main process standing in for the pool (``-j 0``): each task runs when it is submitted."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:            # as a worker's error reaches the parent: through the future
            future.set_exception(err)
        return future


@contextlib.contextmanager
def worker_pool(workers: int, recipes: dict, out: Path, export_challenge: bool) -> Iterator[Executor]:
    """The pool of worker processes, which ignore Ctrl-C: the parent stops the run and says so, once. On Ctrl-C or
    an error the work not yet started is cancelled, not waited for. With no workers, the main process.
    ``recipes``: the recipe of each image type (wsm.config.recipe.recipes_by_type)."""
    if workers == 0:
        _WORKER.update(recipes=recipes, folder=WsmFolder(Path(out)), export_challenge=export_challenge)
        yield InProcess()
        return
    pool = ProcessPoolExecutor(workers, mp_context=_SpawnIgnoringCtrlC(), initializer=init_worker,
                               initargs=(recipes, out, export_challenge))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def init_worker(recipes: dict, out: Path, export_challenge: bool) -> None:
    import cv2

    signal.signal(signal.SIGINT, signal.SIG_IGN)     # also in a worker started from another thread
    cv2.setNumThreads(1)
    _WORKER.update(recipes=recipes, folder=WsmFolder(Path(out)), export_challenge=export_challenge)
    threading.Thread(target=_exit_with_parent, daemon=True, name="wsm-parent-watch").start()


def _exit_with_parent() -> None:
    """A worker whose parent was killed (SIGKILL, the OOM killer) exits too, instead of idling forever."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)


def prepare_image(path: str, recipe_key: str = DEFAULT_TYPE):
    from wsm.mapping import prepare

    return prepare(path, _WORKER["recipes"][DEFAULT_TYPE].preprocess,   # the same for every type
                   detail_side=_WORKER["recipes"][recipe_key].cascade.detail_side_if_enabled)


def _write_maps(isic_id: str, label_map: np.ndarray) -> str:
    from wsm.io.images import write_label_png

    folder = _WORKER["folder"]
    name = folder.map_name(isic_id)
    write_label_png(folder.root / name, label_map)
    if _WORKER["export_challenge"]:
        write_label_png(folder.challenge_mask(isic_id), np.where(label_map == 1, 255, 0).astype(np.uint8))
    return name


def _agreement(label_map: np.ndarray, mask_path: str | None) -> float | None:
    """Jaccard of the map against the image's official mask; None without one (pandas may hand a missing path
    over as NaN) or when the mask cannot be read: the map itself is fine either way."""
    if not isinstance(mask_path, str) or not mask_path:
        return None
    from wsm.errors import WsmError
    from wsm.io.images import read_mask
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


def map_stats(label_map: np.ndarray) -> dict:
    n = label_map.size
    return {"width": label_map.shape[1], "height": label_map.shape[0],
            "lesion_fraction": float((label_map == 1).sum() / n),
            "uncertain_fraction": float((label_map == 255).sum() / n)}


def finish(isic_id: str, pre, maps: dict, mask_path: str | None, recipe_key: str = DEFAULT_TYPE) -> dict:
    from wsm.mapping import label_image
    from wsm.stages.cascade import to_frame

    labelled = label_image(pre, maps, _WORKER["recipes"][recipe_key])
    label_map = to_frame(labelled.label_map, pre)
    agreement = _agreement(label_map, mask_path)
    path = _write_maps(isic_id, label_map)
    predicted = labelled.predicted_jaccard
    return {"isic_id": isic_id, "path": path, **map_stats(label_map), "confidence": labelled.confidence,
            "source": "weak", "agreement": agreement, "status": "ok", "predicted_jaccard": predicted,
            "predicted_fail": None if predicted is None else predicted < FAIL_BELOW}


def official(isic_id: str, mask_path: str) -> dict:
    from wsm.io.images import read_mask

    label_map = (read_mask(mask_path) > 128).astype(np.uint8)
    path = _write_maps(isic_id, label_map)
    return {"isic_id": isic_id, "path": path, **map_stats(label_map), "confidence": 1.0, "source": "official",
            "agreement": 1.0, "status": "ok"}


def skipped(isic_id: str, image_type: str) -> dict:
    """The manifest row of an image whose type the pipeline makes no map for ([image_types] skip)."""
    return {"isic_id": isic_id, "path": None, "source": "skipped", "status": "skipped",
            "error": f"no map for image type {image_type!r}: the pipeline's [image_types] skip lists it (one lesion "
                     "mask does not describe a photograph of a body region or a microscopy image)"}


def failed(isic_id: str, err: BaseException) -> dict:
    """The manifest row of an image that failed. A full or read-only disk is no fault of the image: it is raised
    again, to stop the run instead of failing every image that follows."""
    if disk_error(err) is not None:
        raise err
    return {"isic_id": isic_id, "path": None, "source": "failed", "status": "failed",
            "error": f"{err.__class__.__name__}: {err}"[:500]}
