"""`wsm demo`: the whole flow, offline, on the embedded sample (wsm/sample: 40 ISIC 2018 images, CC-0).

The sample is served by the local archive emulator, downloaded from it like the real archive, its official
masks fetched as challenge zips, then each later stage runs on what was downloaded.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLE = Path(__file__).resolve().parent / "sample"


@dataclass
class DemoContext:
    out: Path
    api_url: str = ""
    challenge_url: str = ""

    @property
    def served(self) -> Path:
        return self.out / "served"

    @property
    def data(self) -> Path:
        return self.out / "data"


def build_served_archive(ctx: DemoContext) -> str:
    from archive_client.importer import import_folders

    import_folders(ctx.served, images=SAMPLE / "images", masks=SAMPLE / "masks", labels=SAMPLE / "labels.csv",
                   challenge="isic2018", split="train", progress=False)
    return f"embedded sample imported into {ctx.served}"


def download_from_emulator(ctx: DemoContext) -> str:
    from archive_client.download import DownloadOptions, download_images

    summary = download_images(ctx.data, DownloadOptions(api_url=ctx.api_url, progress=False))
    if not summary.ok:
        raise RuntimeError("; ".join(summary.lines()))
    return summary.lines()[0]


def download_masks(ctx: DemoContext) -> str:
    from archive_client.challenge_data import download_challenge

    summary = download_challenge(ctx.data, "isic2018", splits=("train",), base_url=ctx.challenge_url,
                                 progress=False)
    return summary.lines()[0]


HELD_OUT = 8   # sample images fit never sees, so the agreement the demo prints is an honest score


def held_out_ids(ctx: DemoContext) -> list[str]:
    return sorted(p.stem for p in (SAMPLE / "images").glob("ISIC_*.jpg"))[::5][:HELD_OUT]


def fit_bundle(ctx: DemoContext) -> str:
    from wsm.fit import FitOptions, fit

    summary = fit(FitOptions(data=ctx.data, out=ctx.out / "bundle", exclude_ids=frozenset(held_out_ids(ctx)),
                             progress=False))
    return "; ".join(summary.lines()[1:])


def generate_maps(ctx: DemoContext) -> str:
    import pyarrow.parquet as pq

    from wsm.generate import GenerateOptions, generate

    summary = generate(GenerateOptions(out=ctx.out / "wsm", bundle=ctx.out / "bundle", data=ctx.data,
                                       export_challenge=True, progress=False))
    rows = pq.read_table(summary.manifest).to_pylist()
    honest = [r["agreement"] for r in rows if r["isic_id"] in held_out_ids(ctx) and r["agreement"] is not None]
    return (f"{summary.lines()[0]}; mean Jaccard with the official masks on the {len(honest)} images fit never "
            f"saw: {sum(honest) / max(len(honest), 1):.3f}")


STEPS: list[tuple[str, Callable[[DemoContext], str]]] = [
    ("download (archive API, from the emulator)", download_from_emulator),
    ("download --challenge isic2018 (official masks)", download_masks),
    ("fit (classifier, segmentation prior, calibration)", fit_bundle),
    ("generate --split all (ISIC_WSM maps)", generate_maps),
]


def run_demo(out: Path, echo: Callable[[str], None] = print) -> DemoContext:
    from archive_client.emulator import EmulatorServer

    ctx = DemoContext(Path(out))
    echo(f"[demo] {build_served_archive(ctx)}")
    with EmulatorServer(ctx.served) as server:
        ctx.api_url, ctx.challenge_url = server.api_url, server.challenge_url
        echo(f"[demo] archive emulator at {ctx.api_url}")
        for title, step in STEPS:
            started = time.perf_counter()
            message = step(ctx)
            echo(f"[demo] {title}: {message} ({time.perf_counter() - started:.1f} s)")
    return ctx
