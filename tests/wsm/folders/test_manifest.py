import json

import pyarrow as pa

from archive_client.manifest import DATA_MANIFEST_CORE, SCHEMAS, manifest_row, schema_description
from wsm.io.tables import merge_rows, read_table, rows_to_table
from paths import REPO


def test_checked_in_schemas_match_the_code():
    for name, (schema, extra) in SCHEMAS.items():
        checked_in = json.loads((REPO / "manifests" / "schemas" / f"{name}.json").read_text())
        assert checked_in == schema_description(schema, extra), f"regenerate manifests/schemas/{name}.json"
    checked_in = {p.stem for p in (REPO / "manifests" / "schemas").glob("*.json")}
    assert {"data_manifest", "gt_manifest", "attribute_manifest"} <= set(SCHEMAS) <= checked_in


def _record(isic_id, **clinical):
    return {"isic_id": isic_id, "copyright_license": "CC-0", "attribution": "A",
            "metadata": {"acquisition": {"image_type": "dermoscopic", "pixels_x": 10},
                         "clinical": {"diagnosis_1": "Benign", **clinical}}}


def test_manifest_row_flattens_metadata_as_strings():
    row = manifest_row(_record("ISIC_0000001", age_approx=45, melanocytic=True), file="images/ISIC_0000001.jpg",
                       nbytes=3, sha256="ab", width=10, height=8, source_url="http://x/1.jpg")
    assert row["image_type"] == "dermoscopic" and row["diagnosis_1"] == "Benign"
    assert (row["age_approx"], row["melanocytic"], row["pixels_x"]) == ("45", "True", "10")
    table = rows_to_table([row], DATA_MANIFEST_CORE)
    assert table.schema.names[: len(DATA_MANIFEST_CORE)] == DATA_MANIFEST_CORE.names
    assert table.schema.field("age_approx").type == pa.string()


def test_merge_replaces_by_key_and_keeps_the_rest(tmp_path):
    def row(i, sha):
        return manifest_row(_record(f"ISIC_000000{i}"), file=f"images/ISIC_000000{i}.jpg", nbytes=1, sha256=sha,
                            width=1, height=1, source_url="http://x")
    old = rows_to_table([row(1, "a"), row(2, "b")], DATA_MANIFEST_CORE)
    merged = merge_rows(old, [row(2, "B"), row(3, "c")], DATA_MANIFEST_CORE, ("isic_id",))
    assert [(r["isic_id"], r["sha256"]) for r in merged.to_pylist()] == [
        ("ISIC_0000001", "a"), ("ISIC_0000002", "B"), ("ISIC_0000003", "c")]
    assert read_table(tmp_path / "missing.parquet", DATA_MANIFEST_CORE).num_rows == 0


def test_the_checked_in_wsm_manifest_schema_matches_the_code():
    from wsm.folders.wsm_folder import WSM_MANIFEST

    checked_in = json.loads((REPO / "manifests" / "schemas" / "wsm_manifest.json").read_text())
    assert checked_in == schema_description(WSM_MANIFEST, None), "regenerate manifests/schemas/wsm_manifest.json"
