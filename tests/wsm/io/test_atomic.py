"""Atomic writes through a temporary file of a fixed name: debris and links there are replaced, never followed."""
import json

from wsm.io.atomic import write_json


def test_a_fixed_temporary_name_replaces_debris_and_links_without_following_them(tmp_path):
    dest, tmp = tmp_path / "state.json", tmp_path / ".state.json.tmp"
    tmp.write_text('{"half": ')                               # a run killed while writing
    write_json(dest, {"a": 1}, fixed_tmp=tmp)
    assert json.loads(dest.read_text()) == {"a": 1} and not tmp.exists()

    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    tmp.symlink_to(outside)                                   # planted where the temporary file goes
    write_json(dest, {"a": 2}, fixed_tmp=tmp)
    assert json.loads(dest.read_text()) == {"a": 2} and outside.read_text() == "untouched"
    assert not tmp.exists() and not tmp.is_symlink()
