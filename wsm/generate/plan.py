"""Which images a `wsm generate` run takes, in which batches, with how many CPU processes.

Work is cut into batches of images whose ids fall in the same block of ``batch_size`` ids; ``--shard i/n`` takes
the blocks with block % n == i, so n machines share the archive with no coordination and every image sees the same
batch, hence byte-identical maps, whether sharded or not.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from wsm.selection import ID_PATTERN, DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
_ISIC = re.compile(r"ISIC_([0-9]{7})")


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
    by_id: dict[str, list[str]] = {}
    for p in files:
        by_id.setdefault(p.stem, []).append(p.name)
    twice = {i: names for i, names in by_id.items() if len(names) > 1}
    if twice:
        first = min(twice)
        raise DataError(f"--images {folder} holds more than one file for {len(twice)} id(s) (e.g. "
                        f"{' and '.join(twice[first])} are both {first}); a map is named by its id: keep one file "
                        "per id (move the others out of the folder)")
    return pd.DataFrame({"isic_id": [p.stem for p in files], "file": [str(p.resolve()) for p in files],
                         "mask_file": [None] * len(files)})


def plan_rows(rows: pd.DataFrame, shard: tuple[int, int], batch_size: int) -> pd.DataFrame:
    rows = rows.sort_values("isic_id", ignore_index=True)
    rows["block"] = [block_of(i, n, batch_size) for n, i in enumerate(rows["isic_id"])]
    return rows[rows["block"] % shard[1] == shard[0]].reset_index(drop=True)


def batches(rows: pd.DataFrame) -> Iterator[pd.DataFrame]:
    for _, group in rows.groupby("block", sort=True):
        yield group


def usable_cores() -> int:
    """The cores this process may run on (a Slurm job's or a container's share, not the whole node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 2


def cpu_split(cores: int, heavy_net_on_cpu: bool, workers: int | None = None) -> tuple[int, int]:
    """(worker processes, torch threads of the main process) for ``cores`` CPU cores; ``workers`` as asked (0: none,
    the main process runs every stage with all the cores), or None to choose.

    The workers run decode, CRF, morphology and PNG (~100 ms per image on one core); the main process runs the
    networks. A heavy network on the CPU (the CAM: forward + backward on 4 flipped views; the prior with flip
    TTA: 4 forwards, ~110 ms) costs as much as the workers' stages, so the networks get half the cores; a plain
    prior (~30 ms) or a GPU leaves most of the CPU to the workers (measured on 2 cores: plain prior 12.2 images/s
    with 2 workers against 7.0 with 1; TTA prior 300 images in 52.7 s with 1 worker against 56.0 s with 2;
    docs/RESULTS.md).
    """
    if workers == 0:                    # no worker processes: the main process does everything
        return 0, cores
    if workers is None:
        workers = max(1, cores // 2) if heavy_net_on_cpu else cores
    threads = max(1, cores - workers) if heavy_net_on_cpu else max(1, cores // 4)
    return workers, threads


def heavy_net_on_cpu(models, recipe, device: str, box_prompts: bool = False) -> bool:
    """Whether the networks this run computes cost the CPU as much as the workers' stages (see cpu_split);
    ``box_prompts``: some of its images go through the box-prompted segmenter (~1 s each on one core)."""
    if models is None or device.startswith("cuda"):
        return False
    return models.classifier is not None or (models.prior is not None and (recipe.prior.flip_tta or box_prompts
                                                                           or recipe.prior.members > 1))
