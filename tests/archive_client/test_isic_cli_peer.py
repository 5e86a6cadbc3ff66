"""Peer check: the official isic-cli 12.4.0 and wsm download the same files and metadata from the emulator."""
from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from archive_client.download import DownloadOptions, download_images

ISIC = shutil.which("isic") or str(Path(sys.executable).with_name("isic"))


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf8") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, sorted(reader, key=lambda r: r["isic_id"])


@pytest.mark.peer
def test_isic_cli_and_wsm_agree(tmp_path, served_data):
    if not Path(ISIC).exists():
        pytest.skip("isic-cli is not installed (pip install -e '.[peer]')")
    if not _port_free(8000):
        pytest.skip("port 8000 is taken; isic-cli --dev only talks to 127.0.0.1:8000")
    from archive_client.emulator import EmulatorServer

    with EmulatorServer(served_data, port=8000) as server:
        env = {**os.environ, "ISIC_DEV": "1", "HOME": str(tmp_path / "home")}
        result = subprocess.run([ISIC, "--no-version-check", "--guest", "image", "download", "--limit", "25",
                                 str(tmp_path / "cli")], env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-2000:]
        download_images(tmp_path / "wsm", DownloadOptions(api_url=server.api_url, limit=25, progress=False))

    cli_images = sorted(p for p in (tmp_path / "cli").glob("ISIC_*"))
    wsm_images = sorted((tmp_path / "wsm" / "images").glob("ISIC_*"))
    assert [p.name for p in cli_images] == [p.name for p in wsm_images] and len(cli_images) == 25
    for a, b in zip(cli_images, wsm_images):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert _rows(tmp_path / "cli" / "metadata.csv") == _rows(tmp_path / "wsm" / "metadata.csv")
    assert (tmp_path / "cli" / "attribution.txt").read_text() == (tmp_path / "wsm" / "attribution.txt").read_text()
    for license_file in (tmp_path / "cli" / "licenses").iterdir():
        assert license_file.read_text() == (tmp_path / "wsm" / "licenses" / license_file.name).read_text()
