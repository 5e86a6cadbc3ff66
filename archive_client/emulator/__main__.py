"""``python -m archive_client.emulator --root DATA``: serve a DATA folder as the ISIC archive until Ctrl-C."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from ..ids import comma_choices
from .faults import DEFAULT_FAULT_KINDS, FAULT_KINDS, ROUTE_GROUPS, EmulatorConfig
from .server import EmulatorServer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m archive_client.emulator",
        description="Serve a wsm DATA folder (manifest.parquet, images/, masks/, gt_manifest.parquet) as a\n"
                    "local ISIC archive: the API v2 under /api/v2/, image files under /media/, and the\n"
                    "challenge mask zips under /challenges/<year>/. Runs until Ctrl-C.",
        epilog="Examples:\n"
               "  python -m archive_client.emulator --root DATA --port 8000\n"
               "  ISIC_DEV=1 isic --no-version-check --guest image download --limit 10 OUT   # port 8000 only\n"
               "  python -m archive_client.emulator --root DATA --fault-rate 0.2 --fault-kinds reset,truncate --seed 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", required=True, help="the DATA folder to serve")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; loopback only "
                                                             "unless --allow-remote)")
    parser.add_argument("--port", type=int, default=8000,
                        help="port (default 8000, where `isic --dev` looks; 0 picks a free one)")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address")
    parser.add_argument("--fault-rate", type=float, default=0.0, metavar="R",
                        help="probability in [0, 1] that a request fails on purpose (default 0)")
    parser.add_argument("--fault-kinds", type=comma_choices(FAULT_KINDS, "fault kind(s)"), default=DEFAULT_FAULT_KINDS, metavar="K1,K2",
                        help=f"comma separated faults to draw from: {', '.join(FAULT_KINDS)} "
                             f"(default {','.join(DEFAULT_FAULT_KINDS)}; malformed is opt-in)")
    parser.add_argument("--fault-routes", type=comma_choices(ROUTE_GROUPS, "route group(s)"), default=ROUTE_GROUPS, metavar="G1,G2",
                        help=f"route groups that get faults: {', '.join(ROUTE_GROUPS)} (default all)")
    parser.add_argument("--max-faults", type=int, default=None, metavar="N", help="stop injecting after N faults")
    parser.add_argument("--latency-ms", type=float, default=0.0, metavar="L", help="delay before every answer")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws (default 0)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = EmulatorConfig(fault_rate=args.fault_rate, fault_kinds=args.fault_kinds,
                                fault_routes=args.fault_routes, max_faults=args.max_faults,
                                latency_ms=args.latency_ms, seed=args.seed)
        server = EmulatorServer(args.root, host=args.host, port=args.port, config=config,
                                allow_remote=args.allow_remote)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job starts with it ignored
        signal.signal(signum, lambda *_: stop.set())
    try:
        server.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"ISIC archive emulator: {len(server.store.ids)} images from {server.store.root}", flush=True)
        print(f"API: {server.api_url}", flush=True)
        print(f"challenge zips: {server.challenge_url}", flush=True)
        print("Ctrl-C to stop.", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    stats = server.stats
    print(f"served {stats.requests} requests, {stats.faults} injected faults", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
