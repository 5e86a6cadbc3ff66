"""A local emulator of the ISIC archive API v2 and the challenge zips, served from a DATA folder.

Tests, ``wsm demo`` and the benchmarks talk to it instead of the network; the official ``isic-cli`` can
download from it too (``ISIC_DEV=1 isic --guest image download ...`` with the emulator on port 8000).

    from archive_client.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(data_root, config=EmulatorConfig(fault_rate=0.1, seed=1)) as server:
        server.api_url        # http://127.0.0.1:PORT/api/v2/
        server.challenge_url  # http://127.0.0.1:PORT/challenges/
        server.stats          # requests, faults (total and by kind), requests by route

Layout: ``query`` (the search DSL), ``records`` (record shapes, paging; pure), ``files`` (ranges, thumbnails,
zips), ``store`` (what a DATA folder holds), ``faults`` (config and fault decisions), ``server`` (HTTP).
"""
from .faults import DEFAULT_FAULT_KINDS, FAULT_KINDS, ROUTE_GROUPS, EmulatorConfig, EmulatorStats
from .query import QueryParseError, parse_query
from .server import EmulatorServer
from .store import ArchiveStore

__all__ = [
    "ArchiveStore",
    "DEFAULT_FAULT_KINDS",
    "EmulatorConfig",
    "EmulatorServer",
    "EmulatorStats",
    "FAULT_KINDS",
    "QueryParseError",
    "ROUTE_GROUPS",
    "parse_query",
]
