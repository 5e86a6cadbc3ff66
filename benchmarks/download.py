"""Download throughput: wsm versus the official isic-cli, against the local emulator with added latency.

    python benchmarks/download.py [--n 500] [--latency-ms 50] [--source DIR]

Builds a DATA folder of N real images (from the dev data, --source, by default, else the embedded
sample repeated under new ids), serves it with the archive emulator on 127.0.0.1:8000 (isic-cli's --dev
address), then times `isic image download --limit N` and `wsm download --limit N`, each at its default
settings, prints images/s and MB/s for each and the ratio, and checks the files are byte-identical.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from devdata import ISIC2018_CROPS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ISIC2018_CROPS


def build_served_data(root: Path, source: Path, n: int) -> None:
    from archive_client.importer import import_folders

    images = sorted(source.glob("images/ISIC_*.jpg") if (source / "images").exists() else source.glob("ISIC_*.jpg"))
    if len(images) < n:
        raise SystemExit(f"{source} has {len(images)} images, fewer than --n {n}")
    staging = root.parent / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    for path in images[:n]:
        os.link(path, staging / path.name) if path.stat().st_dev == staging.stat().st_dev else shutil.copy(path, staging)
    import_folders(root, images=staging, progress=False)


def digest_tree(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("ISIC_*")}


def timed(cmd: list[str], env: dict, out: Path, repeats: int) -> float:
    """Best wall time of `repeats` fresh downloads into `out`."""
    best = float("inf")
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def warm_up(api_url: str) -> None:
    """List every page once so the emulator's thumbnails are cached before either client is timed."""
    import requests

    from archive_client.api import search_images

    with requests.Session() as session:
        for _ in search_images(session, api_url):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--repeats", type=int, default=2, help="runs per client; the best is reported")
    parser.add_argument("--wsm-args", default="", help="extra flags for wsm download, e.g. '--workers 64'")
    args = parser.parse_args()

    from archive_client.emulator import EmulatorConfig, EmulatorServer

    work = Path(tempfile.mkdtemp(prefix="wsm-bench-"))
    try:
        build_served_data(work / "served", args.source, args.n)
        total_mb = sum(p.stat().st_size for p in (work / "served" / "images").glob("ISIC_*")) / 1e6
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "ISIC_DEV": "1", "HOME": str(work / "home")}
        config = EmulatorConfig(latency_ms=args.latency_ms)
        with EmulatorServer(work / "served", port=8000, config=config) as server:
            warm_up(server.api_url)
            t_cli = timed([str(bin_dir / "isic"), "--no-version-check", "--guest", "image", "download",
                           "--limit", str(args.n), str(work / "cli")], env, work / "cli", args.repeats)
            t_wsm = timed([str(bin_dir / "wsm"), "-q", "download", "--out", str(work / "wsm"),
                           "--api-url", server.api_url, "--limit", str(args.n), *args.wsm_args.split()],
                          env, work / "wsm", args.repeats)
        identical = digest_tree(work / "cli") == digest_tree(work / "wsm" / "images")
        print(f"{args.n} images, {total_mb:.1f} MB, emulator latency {args.latency_ms:.0f} ms per request, "
              f"best of {args.repeats} runs each, {os.cpu_count()} cores")
        for name, seconds in (("isic-cli 12.4.0", t_cli), ("wsm", t_wsm)):
            print(f"{name:16s} {seconds:7.2f} s  {args.n / seconds:7.1f} images/s  {total_mb / seconds:6.2f} MB/s")
        print(f"ratio wsm / isic-cli: {t_cli / t_wsm:.2f}x   byte-identical files: {identical}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
