"""The DATA folder that `wsm download`, `wsm download --challenge` and `wsm import` write.

    DATA/
      images/ISIC_x.<ext>               archive images, named as isic-cli names them (a user's own
                                        images by their own ids: IMD002.png)
      metadata.csv, attribution.txt     the same content and columns as isic-cli writes
      licenses/<license>.txt
      manifest.parquet                  one row per image (schema: manifests/schemas/data_manifest.json)
      masks/<challenge>/ISIC_x_segmentation.png   official masks, 0 background / 255 lesion
      gt_manifest.parquet               one row per (isic_id, challenge) (manifests/schemas/gt_manifest.json)
      attributes/<challenge>/ISIC_x_attribute_<name>.png   ISIC 2018 Task 2 attribute masks, 0 / 255, all five
                                        of an image or none (names: archive_client.challenges.ATTRIBUTES)
      attribute_manifest.parquet        one row per (isic_id, challenge, attribute)
                                        (manifests/schemas/attribute_manifest.json)
      .wsm/                             journals, partial downloads and locks (safe to delete when idle)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsm.io.lock import STATE

from .challenges import attribute_file_name
from .ids import check_image_id


@dataclass(frozen=True)
class DataLayout:
    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def masks(self) -> Path:
        return self.root / "masks"

    @property
    def attributes(self) -> Path:
        return self.root / "attributes"

    @property
    def licenses(self) -> Path:
        return self.root / "licenses"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def gt_manifest(self) -> Path:
        return self.root / "gt_manifest.parquet"

    @property
    def attribute_manifest(self) -> Path:
        return self.root / "attribute_manifest.parquet"

    @property
    def metadata_csv(self) -> Path:
        return self.root / "metadata.csv"

    @property
    def attribution(self) -> Path:
        return self.root / "attribution.txt"

    @property
    def state(self) -> Path:
        """Journals and partial files; never read by other tools."""
        return self.root / STATE

    def image_path(self, isic_id: str, ext: str) -> Path:
        return self.images / f"{check_image_id(isic_id)}.{ext}"

    def mask_path(self, isic_id: str, challenge: str) -> Path:
        return self.masks / challenge / f"{check_image_id(isic_id)}_segmentation.png"

    def attribute_path(self, isic_id: str, challenge: str, attribute: str) -> Path:
        """DATA/attributes/<challenge>/ISIC_x_attribute_<attribute>.png; a ValueError for an unknown attribute."""
        return self.attributes / challenge / attribute_file_name(check_image_id(isic_id), attribute)

    def partial_path(self, final: Path) -> Path:
        """Where a download in progress lives: hidden, in the same folder, so the rename is atomic."""
        return final.parent / f".{final.name}.part"
