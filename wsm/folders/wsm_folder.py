"""The WSM folder `wsm generate` writes and `wsm report` / `wsm train` read.

    WSM/
      ISIC_x.png                    the ISIC_WSM label map: 0 background, 1 lesion, 255 uncertain; the image's size
      manifest.parquet              one row per image (schema: WSM_MANIFEST; manifests/schemas/wsm_manifest.json)
      manifest-part-IIII-of-NNNN.parquet   a shard's rows, until `wsm generate --merge` joins them
      challenge/ISIC_x_segmentation.png    0/255 masks for isic-challenge-scoring (--export-challenge)
      .wsm/maker.json               the pipeline and model hashes that made the folder's maps (one maker per folder)
      .wsm/bundle.json              the bundle the maps came from: folder, pipeline name, the masks its fit used
      .wsm/generate-I-of-N.jsonl    journals of maps written but not yet in a manifest (a killed run's)
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from wsm.io.atomic import fsync_dir
from wsm.io.journal import Journal
from wsm.io.lock import STATE
from wsm.io.tables import merge_tables, read_table, write_table_atomic
from wsm.selection import DataError

WSM_MANIFEST = pa.schema(
    [
        ("isic_id", pa.string()),
        ("path", pa.string()),                # label map relative to WSM/ (null when failed)
        ("width", pa.int32()),                # the source image's size = the label map's size
        ("height", pa.int32()),
        ("lesion_fraction", pa.float64()),    # pixels labelled 1
        ("uncertain_fraction", pa.float64()), # pixels labelled 255
        ("confidence", pa.float64()),         # wsm.stages.refine.confidence, in [0, 1]
        ("source", pa.string()),              # weak | official (--prefer-official) | failed | skipped
        ("agreement", pa.float64()),          # Jaccard with the official mask (255 as background), where one exists
        ("mask_used_in_fit", pa.bool_()),     # the official mask was used by fit: agreement is not an honest score
        ("status", pa.string()),              # ok | failed | skipped (an image type with no map: [image_types])
        ("error", pa.string()),               # why it failed or was skipped
        ("pipeline_sha256", pa.string()),     # provenance of the run
        ("model_sha256", pa.string()),        # "classifier=...;prior=..."
        ("wsm_version", pa.string()),
        ("image_bytes", pa.int64()),          # the size of the image file the map was made from (checked on resume)
        ("predicted_jaccard", pa.float64()),  # the map's Jaccard as the bundle's quality model predicts it, in [0, 1]
        ("predicted_fail", pa.bool_()),       # predicted_jaccard below 0.65 (wsm.stages.quality.FAIL_BELOW)
        ("image_type", pa.string()),          # as DATA records it or --image-type gave it (null: not known); it
                                              # chose the recipe (pipeline [image_types]; unknown: dermoscopic)
    ]
)
REWRITE_WSM_MANIFEST = ("move it aside and rerun the `wsm generate` command that wrote it (the maps it no longer lists "
                        "are made again), or `wsm generate --out WSM --merge` for a manifest merged from shards' parts")
MAKER = ("pipeline_sha256", "model_sha256")   # what made a map: the resolved pipeline and the weights
_PART = re.compile(r"manifest-part-(\d+)-of-(\d+)\.parquet")


@dataclass(frozen=True)
class WsmFolder:
    root: Path

    manifest = property(lambda self: self.root / "manifest.parquet")
    state = property(lambda self: self.root / STATE)
    maker_file = property(lambda self: self.state / "maker.json")
    bundle_file = property(lambda self: self.state / "bundle.json")

    def made_with(self) -> dict:
        """The bundle the maps were made with, as the last `wsm generate` recorded it ({} when none did)."""
        try:
            recorded = json.loads(self.bundle_file.read_text(encoding="utf8"))
        except (OSError, ValueError):
            return {}
        return recorded if isinstance(recorded, dict) else {}

    def part(self, shard: int, shards: int) -> Path:
        """The manifest a shard writes; a single run writes manifest.parquet directly."""
        return self.manifest if shards == 1 else self.root / f"manifest-part-{shard:04d}-of-{shards:04d}.parquet"

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("manifest-part-*-of-*.parquet"))

    def journal(self, shard: int, shards: int) -> Path:
        return self.state / f"generate-{shard}-of-{shards}.jsonl"

    def journals(self) -> list[Path]:
        return sorted(self.state.glob("generate-*.jsonl"))

    def map_name(self, isic_id: str) -> str:
        return f"{isic_id}.png"

    def inside(self, relative: str) -> Path:
        """WSM/``relative``, a map path from the manifest or a file name of the folder; refused (DataError) when
        it is absolute, climbs out with '..', or is a link to a file outside the folder: nothing outside WSM is
        read as one of its maps."""
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise DataError(f"{self.manifest} names the map {relative!r}, outside {self.root}: a WSM manifest names "
                            f"files inside its folder; make the maps again with `wsm generate --out NEW`")
        path = self.root / relative
        target = path.resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise DataError(f"{path} is a link to {target}, outside {self.root}: maps are read from inside their "
                            f"folder only; copy the file in (cp -L) instead of linking it")
        return path

    def challenge_mask(self, isic_id: str) -> Path:
        return self.root / "challenge" / f"{isic_id}_segmentation.png"

    def merged_manifest(self) -> Path | None:
        """manifest.parquet; None when the folder has none (maps from elsewhere); an error when only shards' parts
        are there (reading them one by one would miss the other shards' maps)."""
        if self.manifest.exists():
            return self.manifest
        if self.parts():
            raise DataError(f"{self.root} holds shard manifests but no manifest.parquet; join them first with "
                            f"`wsm generate --out {self.root} --merge`")
        return None


def check_out_folder(out: Path, **sources: Path | None) -> None:
    """Refuse an ``--out`` that is, or lies inside, a folder the run reads (``sources``: flag name -> folder, e.g.
    ``data=DATA, images=DIR, bundle=BUNDLE``): maps are named like the images (ISIC_x.png) and would overwrite or
    mix with its files. Links are followed, so a link to DATA/images is refused as DATA/images is."""
    target = Path(out).resolve()
    for flag, folder in sources.items():
        if folder is None:
            continue
        source = Path(folder).resolve()
        if target.is_relative_to(source):
            where = "is" if target == source else "is inside"
            raise DataError(f"--out {out} {where} --{flag} {folder}: maps are named like the images (ISIC_x.png) and "
                            f"would overwrite or mix with the files there; give --out a folder of its own, outside "
                            f"{folder}")


# ------------------------------------------------------------------------------------------- one maker per folder

def map_makers(tables: list[pa.Table]) -> set[tuple]:
    """The (pipeline, models) pairs that made the ok maps of these manifest tables."""
    makers = set()
    for table in tables:
        ok = table.filter(pc.equal(table["status"], "ok"))
        makers |= set(zip(*(ok[column].to_pylist() for column in MAKER)))
    return makers


def known_makers(folder: WsmFolder) -> set[tuple]:
    """Every maker the folder knows of: the recorded one, and those of the ok maps that manifest.parquet, every
    shard's part and every killed run's journal list (folders written before makers were recorded have only these)."""
    manifests = [p for p in (folder.manifest, *folder.parts()) if p.exists()]
    makers = map_makers([read_table(p, WSM_MANIFEST, ["status", *MAKER], REWRITE_WSM_MANIFEST) for p in manifests])
    for journal in folder.journals():
        makers |= {tuple(r.get(c) for c in MAKER) for r in Journal(journal).replay() if r.get("status") == "ok"}
    if folder.maker_file.exists():
        makers.add(tuple(json.loads(folder.maker_file.read_text(encoding="utf8"))))
    return makers


def check_one_maker(makers: set[tuple], folder: WsmFolder) -> None:
    """Refuse a WSM folder whose maps would come from more than one bundle or set of settings (``makers``, with
    this run's when it adds maps): a resumed or sharded run never mixes two kinds of map."""
    if len(makers) > 1:
        raise DataError(f"{folder.root} holds maps made by another bundle or other settings (pipeline, models: "
                        f"{', '.join(map(str, sorted(makers, key=str)))}): write to a new --out, or delete "
                        f"{folder.root} to start again")


def claim_folder(folder: WsmFolder, maker: tuple) -> None:
    """Record ``maker`` as the maker of the folder's maps, unless another run recorded one first, and refuse to go
    on when they differ. The record is linked into place, so of two shards started together only one can win."""
    check_one_maker(known_makers(folder) | {maker}, folder)
    recorded = folder.maker_file
    tmp = recorded.with_name(f".{recorded.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(list(maker)), encoding="utf8")
    try:
        os.link(tmp, recorded)
        fsync_dir(recorded.parent)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    check_one_maker({maker, tuple(json.loads(recorded.read_text(encoding="utf8")))}, folder)


# ------------------------------------------------------------------------------------------------ shards' parts

def check_all_shards(folder: WsmFolder, parts: list[Path]) -> None:
    """Refuse to merge unless every shard of one count wrote its part (a missing one would lose its images)."""
    found = [_PART.fullmatch(p.name) for p in parts]
    counts = {int(m.group(2)) for m in found if m}
    if len(counts) != 1:
        raise DataError(f"{folder.root} holds parts of runs with different shard counts {sorted(counts)}: keep one "
                        "run's")
    count = counts.pop()
    missing = sorted(set(range(count)) - {int(m.group(1)) for m in found if m})
    if missing:
        raise DataError(f"{folder.root}: shard(s) {', '.join(f'{i}/{count}' for i in missing)} have not written "
                        f"their part; run `wsm generate ... --shard {missing[0]}/{count}` (same command as the "
                        "others) first")


def merge_parts(out: Path | str) -> Path:
    """Join the shards' manifest parts into WSM/manifest.parquet (one row per image)."""
    folder = WsmFolder(Path(out))
    parts = folder.parts()
    if not parts:
        raise DataError(f"{folder.root} has no manifest-part-*.parquet files to merge")
    check_all_shards(folder, parts)
    check_one_maker(known_makers(folder), folder)
    merged = WSM_MANIFEST.empty_table()
    for part in parts:
        merged = merge_tables(merged, read_table(part, WSM_MANIFEST, remedy=REWRITE_WSM_MANIFEST), ("isic_id",))
    write_table_atomic(merged, folder.manifest)
    return folder.manifest
