"""Safe extraction: hostile zips crafted here are refused or skipped, nothing lands outside the destination."""
from __future__ import annotations

import re
import stat
import zipfile
from pathlib import Path

import pytest

from archive_client import safezip
from archive_client.errors import ArchiveError, UnsafeArchiveError
from archive_client.safezip import ZipLimits, extract_members

MiB = 1 << 20


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def flat_plan(name: str) -> str | None:
    """Route ISIC-like names to out/<basename>, everything else left out."""
    base = name.rsplit("/", 1)[-1]
    return f"out/{base}" if re.fullmatch(r"ISIC_[0-9]{7}(_segmentation)?\.(png|jpg)", base) else None


def all_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def box(tmp_path):
    """A destination root inside tmp_path, so that anything escaping it would show up beside it."""
    root = tmp_path / "root"
    root.mkdir()
    return tmp_path, root


def test_extracts_planned_entries_and_reports_unexpected(box):
    tmp, root = box
    zp = make_zip(tmp / "a.zip", [
        ("Folder/", b""),
        ("Folder/ISIC_0000001_segmentation.png", b"mask-1"),
        ("Folder/ISIC_0000002_segmentation.png", b"mask-2" * 100),
        ("Folder/ATTRIBUTION.txt", b"x"),
        ("Folder/LICENSE.txt", b"x"),
        ("__MACOSX/Folder/._ISIC_0000001_segmentation.png", b"x"),
        ("Folder/ISIC_0000001_superpixels.png", b"x"),
        ("Folder/ISIC-2017_Training_Part3_GroundTruth.csv", b"x"),
        ("Folder/notes.docx", b"surprise"),
    ])
    report = extract_members(zp, flat_plan, root)
    assert [m.name for m in report.written] == ["Folder/ISIC_0000001_segmentation.png",
                                                 "Folder/ISIC_0000002_segmentation.png"]
    assert (root / "out/ISIC_0000001_segmentation.png").read_bytes() == b"mask-1"
    assert report.unexpected == ["Folder/notes.docx"]
    assert report.bytes_written == 6 + 600
    assert all_files(tmp) == {"a.zip", "root/out/ISIC_0000001_segmentation.png",
                              "root/out/ISIC_0000002_segmentation.png"}


def test_mapping_plan(box):
    tmp, root = box
    zp = make_zip(tmp / "a.zip", [("x/ISIC_0000001.jpg", b"img"), ("x/ISIC_0000002.jpg", b"img2")])
    report = extract_members(zp, {"x/ISIC_0000001.jpg": root / "images/ISIC_0000001.jpg"}, root)
    assert [m.path for m in report.members] == [root / "images/ISIC_0000001.jpg"]
    assert report.unexpected == ["x/ISIC_0000002.jpg"]


def test_rerun_skips_existing_files_of_same_size(box):
    tmp, root = box
    zp = make_zip(tmp / "a.zip", [("ISIC_0000001.png", b"abc"), ("ISIC_0000002.png", b"defg")])
    first = extract_members(zp, flat_plan, root)
    assert len(first.written) == 2
    target = root / "out/ISIC_0000001.png"
    before = target.stat().st_mtime_ns, target.stat().st_ino
    second = extract_members(zp, flat_plan, root)
    assert second.written == [] and len(second.existing) == 2 and second.bytes_written == 0
    assert (target.stat().st_mtime_ns, target.stat().st_ino) == before
    # a truncated leftover (different size) is replaced; a same-size different file only with the CRC check
    target.write_bytes(b"ab")
    assert [m.name for m in extract_members(zp, flat_plan, root).written] == ["ISIC_0000001.png"]
    target.write_bytes(b"xyz")
    assert extract_members(zp, flat_plan, root).written == []
    again = extract_members(zp, flat_plan, root, verify_existing_crc=True)
    assert [m.name for m in again.written] == ["ISIC_0000001.png"] and target.read_bytes() == b"abc"


@pytest.mark.parametrize("name, why", [
    ("../evil", "'..' component"),
    ("dir/../../evil", "'..' component"),
    ("/abs/evil", "absolute path"),
    ("C:/evil", "drive letter"),
    ("dir\\..\\evil", "backslash"),
    ("ev\x01il", "control character"),
])
def test_hostile_names_refuse_the_whole_archive(box, name, why):
    tmp, root = box
    info = zipfile.ZipInfo(name)
    zp = make_zip(tmp / "a.zip", [("ISIC_0000001.png", b"ok"), (info, b"pwned")])
    assert any(i.filename == name for i in zipfile.ZipFile(zp).infolist())   # the zip really holds it
    with pytest.raises(UnsafeArchiveError, match=why) as err:
        extract_members(zp, lambda n: f"out/{n}", root)
    assert repr(name)[1:-1] in str(err.value)
    assert all_files(tmp) == {"a.zip"}      # refused before anything was written, even the good entry
    assert not (tmp / "evil").exists() and not Path("/abs/evil").exists()


def test_hostile_name_refuses_even_when_the_plan_would_skip_it(box):
    tmp, root = box
    zp = make_zip(tmp / "a.zip", [("ISIC_0000001.png", b"ok"), ("__MACOSX/../../evil", b"x")])
    with pytest.raises(UnsafeArchiveError, match="evil"):
        extract_members(zp, flat_plan, root)
    assert all_files(tmp) == {"a.zip"}


def test_symlink_entry_is_refused(box):
    tmp, root = box
    link = zipfile.ZipInfo("ISIC_0000001_segmentation.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    zp = make_zip(tmp / "a.zip", [(link, b"/etc/passwd")])
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        extract_members(zp, flat_plan, root)
    assert all_files(tmp) == {"a.zip"}


def test_special_file_entry_is_refused(box):
    tmp, root = box
    fifo = zipfile.ZipInfo("ISIC_0000001.png")
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    zp = make_zip(tmp / "a.zip", [(fifo, b"")])
    with pytest.raises(UnsafeArchiveError, match="special file"):
        extract_members(zp, flat_plan, root)


def test_plan_that_escapes_the_root_is_refused(box):
    tmp, root = box
    zp = make_zip(tmp / "a.zip", [("ISIC_0000001.png", b"x")])
    for dest in ("../outside.png", tmp / "outside.png", "/tmp/outside.png", ".", "a/../../outside.png"):
        with pytest.raises(UnsafeArchiveError, match="outside the destination root"):
            extract_members(zp, lambda n, d=dest: d, root)
    assert all_files(tmp) == {"a.zip"}


def test_two_entries_to_one_destination_are_refused(box):
    tmp, root = box
    zp = make_zip(tmp / "a.zip", [("a/ISIC_0000001.png", b"x"), ("b/ISIC_0000001.png", b"y")])
    with pytest.raises(UnsafeArchiveError, match="both go to"):
        extract_members(zp, flat_plan, root)
    assert all_files(tmp) == {"a.zip"}


def test_zip_bomb_ratio_is_refused(box):
    tmp, root = box
    zp = make_zip(tmp / "bomb.zip", [("ISIC_0000001.png", b"ok"), ("ISIC_0000002.png", bytes(4 * MiB))])
    assert zipfile.ZipFile(zp).getinfo("ISIC_0000002.png").compress_size < 4 * MiB / 200
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        extract_members(zp, flat_plan, root)
    assert all_files(tmp) == {"bomb.zip"}
    # compressible but small entries are fine
    small = make_zip(tmp / "small.zip", [("ISIC_0000003.png", bytes(MiB // 2))])
    assert len(extract_members(small, flat_plan, root).written) == 1


def test_ratio_and_size_enforced_on_bytes_read_not_only_the_header(box, monkeypatch):
    tmp, root = box
    zp = make_zip(tmp / "bomb.zip", [("ISIC_0000002.png", bytes(4 * MiB))])
    monkeypatch.setattr(safezip, "_check_claims", lambda planned, limits: None)   # a header that lies
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        extract_members(zp, flat_plan, root, limits=ZipLimits(chunk_bytes=64 * 1024))
    with pytest.raises(UnsafeArchiveError, match="expands past"):
        extract_members(zp, flat_plan, root, limits=ZipLimits(max_entry_bytes=MiB, max_ratio=1e9))
    assert all_files(tmp) == {"bomb.zip"}      # the temporary files are gone too


def test_entry_and_total_caps(box):
    tmp, root = box
    zp = make_zip(tmp / "a.zip", [("ISIC_0000001.png", b"a" * 1000), ("ISIC_0000002.png", b"b" * 1000)],
                  method=zipfile.ZIP_STORED)
    with pytest.raises(UnsafeArchiveError, match="per-entry cap"):
        extract_members(zp, flat_plan, root, limits=ZipLimits(max_entry_bytes=999))
    with pytest.raises(UnsafeArchiveError, match="cap of 1500"):
        extract_members(zp, flat_plan, root, limits=ZipLimits(max_total_bytes=1500))
    assert all_files(tmp) == {"a.zip"}
    # entries the plan leaves out do not count
    report = extract_members(zp, lambda n: "out/one" if n.endswith("1.png") else None, root,
                             limits=ZipLimits(max_total_bytes=1500))
    assert report.bytes_written == 1000


def _corrupt(path: Path, marker: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(marker)
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_crc_error_raises_archive_error_and_leaves_no_partial_file(box):
    tmp, root = box
    zp = make_zip(tmp / "a.zip", [("ISIC_0000001.png", b"first-file"), ("ISIC_0000002.png", b"SECOND" * 50_000)],
                  method=zipfile.ZIP_STORED)
    _corrupt(zp, b"SECONDSECOND")
    with pytest.raises(ArchiveError, match="(?i)crc|corrupt") as err:
        extract_members(zp, flat_plan, root)
    assert not isinstance(err.value, UnsafeArchiveError)
    assert "a.zip" in str(err.value)
    # the entry completed before the corruption stays; the broken one and its temporary file do not exist
    assert all_files(tmp) == {"a.zip", "root/out/ISIC_0000001.png"}


def test_corrupt_deflate_stream_raises_archive_error(box):
    tmp, root = box
    payload = bytes(range(256)) * 4000
    zp = make_zip(tmp / "a.zip", [("ISIC_0000001.png", payload)])
    data = bytearray(zp.read_bytes())
    info = zipfile.ZipFile(zp).getinfo("ISIC_0000001.png")
    start = info.header_offset + 30 + len(info.filename)
    for i in range(start + 10, start + 40):
        data[i] ^= 0x5A
    zp.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        extract_members(zp, flat_plan, root)
    assert all_files(tmp) == {"a.zip"}


def test_not_a_zip_and_truncated_zip(box):
    tmp, root = box
    junk = tmp / "junk.zip"
    junk.write_bytes(b"<html>404</html>")
    with pytest.raises(ArchiveError, match="corrupt or not a zip"):
        extract_members(junk, flat_plan, root)
    zp = make_zip(tmp / "t.zip", [("ISIC_0000001.png", b"x" * 10_000)])
    zp.write_bytes(zp.read_bytes()[:-40])      # the central directory is cut
    with pytest.raises(ArchiveError):
        extract_members(zp, flat_plan, root)
    assert all_files(tmp) == {"junk.zip", "t.zip"}
