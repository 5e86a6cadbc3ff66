"""`wsm demo`: the whole flow, offline, on the embedded sample (wsm/sample: 40 ISIC 2018 images, CC-0), with a
progress bar on every long step.

The sample is served by the local archive emulator, downloaded from it like the real archive, its official
masks fetched as challenge zips (8 images in a `test` split), then: fit (never sees the test images), generate,
report on the test masks, and train a U-Net on the weak maps, scored on the test masks.
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
    report: Path | None = None
    progress: bool = True          # progress bars on stderr for the long steps

    @property
    def served(self) -> Path:
        return self.out / "served"

    @property
    def data(self) -> Path:
        return self.out / "data"


def build_served_archive(ctx: DemoContext) -> str:
    """The sample as an archive to serve: the held-out images' masks in the `test` split, the rest in `train`."""
    from archive_client.importer import import_folders

    held_out = set(held_out_ids())
    for split in ("train", "test"):
        staging = ctx.out / "sample" / split
        for kind, pattern in (("images", "ISIC_*.jpg"), ("masks", "ISIC_*_segmentation.png")):
            (staging / kind).mkdir(parents=True, exist_ok=True)
            for path in (SAMPLE / kind).glob(pattern):
                link = staging / kind / path.name
                if (path.name[:12] in held_out) == (split == "test") and not link.exists():
                    link.symlink_to(path)
        import_folders(ctx.served, images=staging / "images", masks=staging / "masks", labels=SAMPLE / "labels.csv",
                       challenge="isic2018", split=split, progress=False)
    return f"embedded sample imported into {ctx.served} ({len(held_out)} images in the test split)"


def download_from_emulator(ctx: DemoContext) -> str:
    from archive_client.download import DownloadOptions, download_images

    summary = download_images(ctx.data, DownloadOptions(api_url=ctx.api_url, progress=ctx.progress))
    if not summary.ok:
        raise RuntimeError("; ".join(summary.lines()))
    return summary.lines()[0]


def download_masks(ctx: DemoContext) -> str:
    from archive_client.challenge_data import download_challenge

    summary = download_challenge(ctx.data, "isic2018", splits=("train", "test"), base_url=ctx.challenge_url,
                                 progress=ctx.progress)
    return summary.lines()[0]


HELD_OUT = 8   # sample images in the test split: fit never sees them, report and train score on them


def held_out_ids() -> list[str]:
    return sorted(p.stem for p in (SAMPLE / "images").glob("ISIC_*.jpg"))[::5][:HELD_OUT]


def fit_bundle(ctx: DemoContext) -> str:
    from wsm.fit import FitOptions, fit

    summary = fit(FitOptions(data=ctx.data, out=ctx.out / "bundle", exclude_ids=frozenset(held_out_ids()),
                             progress=ctx.progress))
    return "; ".join(summary.lines()[1:])


def generate_maps(ctx: DemoContext) -> str:
    from wsm.generate import GenerateOptions, generate

    summary = generate(GenerateOptions(out=ctx.out / "wsm", bundle=ctx.out / "bundle", data=ctx.data,
                                       export_challenge=True, progress=ctx.progress))
    return summary.lines()[0]


def report_maps(ctx: DemoContext) -> str:
    from wsm.report.driver import build_report, report_command

    maps, report = ctx.out / "wsm", ctx.out / "report"
    summary = build_report(maps, ctx.data, report, split="test",
                           command=report_command(maps, ctx.data, report, "test"))
    ctx.report = summary.html
    return "; ".join(summary.lines())


def train_on_maps(ctx: DemoContext) -> str:
    from wsm.train import TrainOptions, run

    summary = run(TrainOptions(data=ctx.data, out=ctx.out / "train", labels=str(ctx.out / "wsm"), split_train="train",
                               eval_split="test", epochs=6, size=128, batch_size=8, progress=ctx.progress))
    return "; ".join(summary.lines())


STEPS: list[tuple[str, Callable[[DemoContext], str]]] = [
    ("download (archive API, from the emulator)", download_from_emulator),
    ("download --challenge isic2018 (official masks)", download_masks),
    ("fit (segmentation prior, calibration)", fit_bundle),
    ("generate --split all (ISIC_WSM maps)", generate_maps),
    ("report --split test (official metrics on the held-out masks)", report_maps),
    ("train (a U-Net on the weak maps, scored on the held-out official masks)", train_on_maps),
]


def run_demo(out: Path, echo: Callable[[str], None] = print, progress: bool = True) -> DemoContext:
    from archive_client.emulator import EmulatorServer

    ctx = DemoContext(Path(out), progress=progress)
    echo(f"[demo] {build_served_archive(ctx)}")
    with EmulatorServer(ctx.served) as server:
        ctx.api_url, ctx.challenge_url = server.api_url, server.challenge_url
        echo(f"[demo] archive emulator at {ctx.api_url}")
        for title, step in STEPS:
            started = time.perf_counter()
            message = step(ctx)
            echo(f"[demo] {title}: {message} ({time.perf_counter() - started:.1f} s)")
    echo(f"[demo] report: {ctx.report}")
    return ctx
