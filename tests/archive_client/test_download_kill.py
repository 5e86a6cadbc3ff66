"""A download killed with SIGKILL half-way, then rerun, ends complete and consistent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from archive_client.download import DownloadOptions, download_images
from test_download import FAST, assert_complete, served_files, sha256


@pytest.mark.slow
def test_sigkill_then_rerun_completes(tmp_path):
    from archive_client.emulator import EmulatorConfig, EmulatorServer
    from datafactory import make_data

    served = tmp_path / "served"
    make_data(served, n_images=150, with_masks=False, seed=1)
    expected = served_files(served)
    data = tmp_path / "data"
    with EmulatorServer(served, config=EmulatorConfig(latency_ms=40, fault_rate=0.05, seed=1)) as server:
        cmd = [sys.executable, "-m", "wsm", "-q", "download", "--out", str(data), "--api-url", server.api_url,
               "--connections", "4"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            done = list((data / "images").glob("ISIC_*")) if (data / "images").exists() else []
            if len(done) >= 40:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the download ended before it could be killed: {proc.stderr.read()!r}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

        # Right after the kill: whatever carries a final name is complete, whatever the manifest lists is valid.
        finals = list((data / "images").glob("ISIC_*"))
        assert 40 <= len(finals) < 150
        for path in finals:
            assert sha256(path) == expected[path.stem], f"{path.name} is visible but incomplete"
        if (data / "manifest.parquet").exists():
            for row in pq.read_table(data / "manifest.parquet").to_pylist():
                assert sha256(data / row["file"]) == row["sha256"]

        summary = download_images(data, DownloadOptions(api_url=server.api_url, progress=False, policy=FAST))
    assert summary.ok and summary.matched == 150
    assert summary.downloaded < 150 - 30, "the rerun fetched files the killed run had completed"
    assert_complete(data, expected)


@pytest.mark.slow
def test_ctrl_c_keeps_a_consistent_manifest(tmp_path):
    from archive_client.emulator import EmulatorConfig, EmulatorServer
    from datafactory import make_data

    served = tmp_path / "served"
    make_data(served, n_images=120, with_masks=False, seed=2)
    expected = served_files(served)
    data = tmp_path / "data"
    with EmulatorServer(served, config=EmulatorConfig(latency_ms=40, seed=2)) as server:
        cmd = [sys.executable, "-m", "wsm", "-q", "download", "--out", str(data), "--api-url", server.api_url,
               "--connections", "2"]
        # A shell's background job (`make test &`, some CI runners) starts with SIGINT ignored, and Python keeps it
        # ignored: give the child the default disposition, as a terminal's Ctrl-C would find it.
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(data.glob("images/ISIC_*"))) < 20:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "rerun the same command to resume" in err
        rows = pq.read_table(data / "manifest.parquet").to_pylist()
        assert 20 <= len(rows) < 120
        for row in rows:
            assert sha256(data / row["file"]) == row["sha256"] == expected[row["isic_id"]]
        summary = download_images(data, DownloadOptions(api_url=server.api_url, progress=False, policy=FAST))
    assert summary.ok and summary.skipped >= len(rows)
    assert_complete(data, expected)
