"""WSM/: the ISIC_WSM label maps and their manifest (schema also in manifests/schemas/wsm_manifest.json)."""
from __future__ import annotations

import pyarrow as pa

WSM_MANIFEST = pa.schema(
    [
        ("isic_id", pa.string()),
        ("path", pa.string()),                # label map relative to WSM/ (null when failed)
        ("width", pa.int32()),                # the source image's size = the label map's size
        ("height", pa.int32()),
        ("lesion_fraction", pa.float64()),    # pixels labelled 1
        ("uncertain_fraction", pa.float64()), # pixels labelled 255
        ("confidence", pa.float64()),         # wsm.stages.refine.confidence, in [0, 1]
        ("source", pa.string()),              # weak | official (--prefer-official) | failed
        ("agreement", pa.float64()),          # Jaccard with the official mask (255 as background), where one exists
        ("mask_used_in_fit", pa.bool_()),     # the official mask was used by fit: agreement is not an honest score
        ("status", pa.string()),              # ok | failed
        ("error", pa.string()),               # why it failed
        ("pipeline_sha256", pa.string()),     # provenance of the run
        ("model_sha256", pa.string()),        # "classifier=...;prior=..."
        ("wsm_version", pa.string()),
    ]
)


def part_name(shard: int, shards: int) -> str:
    """The manifest a shard writes; a single run writes manifest.parquet directly."""
    return "manifest.parquet" if shards == 1 else f"manifest-part-{shard:04d}-of-{shards:04d}.parquet"
