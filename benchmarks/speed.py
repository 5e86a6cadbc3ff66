"""Generation speed: end-to-end images/s, per-stage times, peak memory, and the cost against the bare network.

    python benchmarks/speed.py --bundle BUNDLE [--n 200] [--memory-n 200,2000] [--source DIR]
                               [--set prior.flip_tta=true ...]

1. per-stage times, one image at a time in this process: decode+preprocess, CAM (forward+backward, flip TTA),
   prior, fusion+CRF+morphology+decision, resize back and PNG write (every network's, even one that generate
   skips because calibration weighted its map 0);
2. `wsm generate` end to end on N images (its default workers), in a subprocess: images/s;
3. peak memory (the summed RSS of generate and its workers, sampled every 0.2 s) at each --memory-n;
4. the bare loop a user would write instead, on the same N images in this process: decode (PIL), resize to the
   prior's size, shades-of-grey white balance of the whole image when the bundle's recipe has colour constancy (the
   prior learnt on white-balanced images), one forward of the same prior (no TTA), threshold 0.5, resize back, PNG;
   wsm's throughput as a fraction of it, and its stages beside wsm's (the cost of TTA, CRF, journal and manifest);
5. the bare classifier forward+backward on the same N images at the same size and batch: the unavoidable cost of
   a gradient-based CAM (only when generate computes the CAM with this bundle).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devdata import ISIC2018_CROPS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ISIC2018_CROPS


def tree_rss_mb(pid: int) -> float:
    """RSS of pid and its descendants, from /proc."""
    total, stack = 0, [pid]
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    while stack:
        p = stack.pop()
        try:
            total += int((Path(f"/proc/{p}/statm")).read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            pass
        stack += children.get(p, [])
    return total / 1e6


def run_generate(bundle: Path, folder: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "wsm", "-q", "generate", "--images", str(folder), "--bundle", str(bundle),
           "--out", str(out), *extra]
    start, peak = time.perf_counter(), 0.0
    proc = subprocess.Popen(cmd)
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.2)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"generate failed: {cmd}")
    return time.perf_counter() - start, peak


def stage_times(bundle: Path, files: list[Path], overrides: tuple[str, ...] = ()) -> dict[str, float]:
    from wsm.folders.bundle import load_bundle
    from wsm.mapping import label_image, prepare
    from wsm.io.images import encode_label_png
    from wsm.stages.refine import to_original_size

    b = load_bundle(bundle).with_inference_overrides(overrides)
    models = b.load_models("cpu", skip_unweighted=False)
    times = dict.fromkeys(["decode+preprocess", "cam", "prior", "fuse+crf+morphology+decide", "resize+png"], 0.0)
    for path in files:
        t = time.perf_counter()
        pre = prepare(path, b.recipe.preprocess)
        times["decode+preprocess"] += time.perf_counter() - t
        maps = {}
        for name, net in (("cam", models.classifier), ("prior", models.prior)):
            if net is None:
                continue
            only = type(models)(b.recipe, **{("classifier" if name == "cam" else "prior"): net})
            t = time.perf_counter()
            maps.update(only.evidence([pre.image])[0])
            times[name] += time.perf_counter() - t
        t = time.perf_counter()
        labelled = label_image(pre, maps, b.recipe)
        times["fuse+crf+morphology+decide"] += time.perf_counter() - t
        t = time.perf_counter()
        encode_label_png(to_original_size(labelled.label_map, pre.original_size))
        times["resize+png"] += time.perf_counter() - t
    return {k: v / len(files) for k, v in times.items()}


def bare_classifier_seconds(bundle: Path, files: list[Path], batch: int = 16) -> float:
    """Forward+backward of the classifier on the images, already decoded and resized (the network alone)."""
    from wsm.folders.bundle import load_bundle
    from wsm.mapping import prepare
    from wsm.models.inputs import to_batch

    b = load_bundle(bundle)
    net = b.load_models("cpu", skip_unweighted=False).classifier
    images = [prepare(p, b.recipe.preprocess).image for p in files]
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        x = to_batch(images[i:i + batch], b.recipe.classifier.size, "cpu")
        net.zero_grad()
        net(x).max(dim=1).values.sum().backward()
    return time.perf_counter() - start


def bare_loop_seconds(bundle: Path, files: list[Path], out: Path, batch: int = 16) -> dict[str, float]:
    """What a user would write without wsm: decode, resize, (white balance, when the prior learnt on white-balanced
    images), one forward of the prior, threshold, resize back, PNG. Returns the seconds of each stage over all
    files."""
    import numpy as np
    import torch
    from PIL import Image

    from wsm.folders.bundle import load_bundle
    from wsm.stages.preprocess import shades_of_grey
    from wsm.models.inputs import normalize

    b = load_bundle(bundle)
    net, size = b.load_models("cpu", skip_unweighted=False).prior, b.recipe.prior.size
    if net is None:
        raise SystemExit(f"{bundle} has no prior: the bare loop needs one")
    pre = b.recipe.preprocess

    def network_input(image) -> np.ndarray:
        rgb = np.asarray(image.resize((size, size), Image.BILINEAR))
        rgb = shades_of_grey(rgb, pre.colour_constancy_p) if pre.colour_constancy else rgb
        return normalize(rgb).transpose(2, 0, 1)

    out.mkdir(parents=True, exist_ok=True)
    times = dict.fromkeys(["decode+resize", "forward", "threshold+resize+png"], 0.0)
    for i in range(0, len(files), batch):
        t = time.perf_counter()
        images = [Image.open(f).convert("RGB") for f in files[i:i + batch]]
        x = torch.from_numpy(np.stack([network_input(im) for im in images]))
        times["decode+resize"] += time.perf_counter() - t
        t = time.perf_counter()
        with torch.inference_mode():
            probs = torch.sigmoid(net(x)[:, 0]).numpy()
        times["forward"] += time.perf_counter() - t
        t = time.perf_counter()
        for f, im, prob in zip(files[i:i + batch], images, probs):
            mask = Image.fromarray((prob > 0.5).astype(np.uint8)).resize(im.size, Image.NEAREST)
            mask.save(out / f"{f.stem}.png")     # 0/1: an ISIC_WSM map without uncertain pixels
        times["threshold+resize+png"] += time.perf_counter() - t
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REPO / "out" / "bench-quality" / "fold0" / "bundle-default")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--memory-n", default="200,2000")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--stage-n", type=int, default=30, help="images for the per-stage times")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a generate-time setting, e.g. prior.flip_tta=true (repeatable)")
    args = parser.parse_args()
    overrides = tuple(args.overrides)

    files = sorted((args.source / "images").glob("ISIC_*.jpg"))
    sizes = sorted({args.n, *(int(s) for s in args.memory_n.split(","))})
    if len(files) < max(sizes):
        raise SystemExit(f"{args.source} has {len(files)} images, fewer than {max(sizes)}")
    import torch

    print(f"bundle {args.bundle}{''.join(f' --set {o}' for o in overrides)}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}")
    from wsm.folders.bundle import load_bundle

    bundle = load_bundle(args.bundle).with_inference_overrides(overrides)
    used, every = bundle.load_models("cpu"), bundle.load_models("cpu", skip_unweighted=False)
    skipped = [name for name, attr in (("cam", "classifier"), ("prior", "prior"))
               if getattr(every, attr) is not None and getattr(used, attr) is None]
    if skipped:
        print(f"note: generate skips {', '.join(skipped)} with this bundle (fusion weight 0); its per-stage time "
              "below is for information")
    stages = stage_times(args.bundle, files[: args.stage_n], overrides)
    for name, seconds in stages.items():
        print(f"stage {name:28s} {seconds * 1000:8.1f} ms/image")
    with tempfile.TemporaryDirectory(prefix="wsm-speed-") as tmp:
        tmp = Path(tmp)
        results = {}
        for n in sizes:
            folder = tmp / f"in{n}"
            folder.mkdir()
            for f in files[:n]:
                os.symlink(f, folder / f.name)
            results[n] = run_generate(args.bundle, folder, tmp / f"out{n}",
                                      [arg for o in overrides for arg in ("--set", o)])
            seconds, peak = results[n]
            print(f"generate {n:5d} images: {seconds:7.1f} s, {n / seconds:6.2f} images/s, peak RSS {peak:7.0f} MB")
        loop = bare_loop_seconds(args.bundle, files[: args.n], tmp / "bare")
        loop_s = sum(loop.values())
        print(f"bare loop (decode, resize, one prior forward, threshold, PNG) on {args.n} images: {loop_s:.1f} s "
              f"({args.n / loop_s:.2f} images/s); " + ", ".join(f"{k} {v / args.n * 1000:.1f} ms/image"
                                                                 for k, v in loop.items()))
        print(f"wsm generate throughput / bare loop: {loop_s / results[args.n][0]:.2f} (goal: at least 0.5)")
        if "cam" not in skipped and every.classifier is not None:
            bare = bare_classifier_seconds(args.bundle, files[: args.n])
            print(f"bare classifier forward+backward on {args.n} images: {bare:.1f} s ({args.n / bare:.2f} images/s)")
            print(f"pipeline / bare classifier: {results[args.n][0] / bare:.2f}x")


if __name__ == "__main__":
    main()
