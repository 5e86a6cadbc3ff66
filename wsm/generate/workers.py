"""What `wsm generate`'s worker processes do: decode and pre-process an image, then refine, decide and write its
map (each worker runs one thread; the networks run in the main process between the two)."""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
from pathlib import Path

import numpy as np

from wsm.generate.folder import WsmFolder

log = logging.getLogger(__name__)


_WORKER: dict = {}


def init_worker(recipe, out: Path, export_challenge: bool) -> None:
    import cv2

    cv2.setNumThreads(1)
    _WORKER.update(recipe=recipe, folder=WsmFolder(Path(out)), export_challenge=export_challenge)
    threading.Thread(target=_exit_with_parent, daemon=True, name="wsm-parent-watch").start()


def _exit_with_parent() -> None:
    """A worker whose parent was killed (SIGKILL, the OOM killer) exits too, instead of idling forever."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)


def prepare_image(path: str):
    from wsm.generate.maps import prepare

    return prepare(path, _WORKER["recipe"].preprocess)


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
    from wsm.report.metrics import confusion_counts, image_metrics

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


def finish(isic_id: str, pre, maps: dict, mask_path: str | None) -> dict:
    from wsm.generate.maps import label_image
    from wsm.stages.refine import to_original_size

    labelled = label_image(pre, maps, _WORKER["recipe"])
    label_map = to_original_size(labelled.label_map, pre.original_size)
    agreement = _agreement(label_map, mask_path)
    path = _write_maps(isic_id, label_map)
    return {"isic_id": isic_id, "path": path, **map_stats(label_map), "confidence": labelled.confidence,
            "source": "weak", "agreement": agreement, "status": "ok"}


def official(isic_id: str, mask_path: str) -> dict:
    from wsm.io.images import read_mask

    label_map = (read_mask(mask_path) > 128).astype(np.uint8)
    path = _write_maps(isic_id, label_map)
    return {"isic_id": isic_id, "path": path, **map_stats(label_map), "confidence": 1.0, "source": "official",
            "agreement": 1.0, "status": "ok"}


def failed(isic_id: str, err: BaseException) -> dict:
    return {"isic_id": isic_id, "path": None, "source": "failed", "status": "failed",
            "error": f"{err.__class__.__name__}: {err}"[:500]}
