"""What can go wrong on purpose: the emulator's config, the fault decision and the request counters."""
from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field

# Faults a request can get. The first five are on by default; ``malformed`` is opt-in (API routes only).
#   http500 / http503   an error status with a short body
#   http429             Too Many Requests with ``Retry-After: 1``
#   reset               the connection is closed (RST) without an answer
#   truncate            headers with the full Content-Length, then part of the body, then close
#   malformed           200 with a cut-off JSON body (its Content-Length matches what is sent)
FAULT_KINDS = ("http500", "http503", "http429", "reset", "truncate", "malformed")
DEFAULT_FAULT_KINDS = ("http500", "http503", "http429", "reset", "truncate")
# Route groups faults can be limited to: the JSON API, image files and thumbnails, challenge zips.
ROUTE_GROUPS = ("api", "media", "challenges")


@dataclass(frozen=True)
class EmulatorConfig:
    fault_rate: float = 0.0                                # probability in [0, 1] that a request gets a fault
    fault_kinds: tuple[str, ...] = DEFAULT_FAULT_KINDS     # which faults to draw from (see FAULT_KINDS)
    fault_routes: tuple[str, ...] = ROUTE_GROUPS           # which route groups get faults
    max_faults: int | None = None                          # stop injecting after this many (None: no cap)
    latency_ms: float = 0.0                                # sleep before answering each request
    seed: int = 0                                          # faults are a function of (seed, request, repeat)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fault_kinds", tuple(self.fault_kinds))
        object.__setattr__(self, "fault_routes", tuple(self.fault_routes))
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, got {self.fault_rate}")
        unknown = [k for k in self.fault_kinds if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kind(s) {', '.join(unknown)}; choose from {', '.join(FAULT_KINDS)}")
        if self.fault_rate > 0 and not self.fault_kinds:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        bad_routes = [r for r in self.fault_routes if r not in ROUTE_GROUPS]
        if bad_routes:
            raise ValueError(f"unknown route group(s) {', '.join(bad_routes)}; choose from {', '.join(ROUTE_GROUPS)}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")
        if self.max_faults is not None and self.max_faults < 0:
            raise ValueError(f"max_faults must be >= 0 or None, got {self.max_faults}")


def applicable_kinds(kinds: tuple[str, ...], group: str, has_body: bool) -> tuple[str, ...]:
    """The configured kinds that make sense for a request: truncate needs a body, malformed an API body."""
    return tuple(
        k for k in kinds
        if (k != "truncate" or has_body) and (k != "malformed" or (has_body and group == "api"))
    )


@dataclass(frozen=True)
class EmulatorStats:
    """A snapshot of what the emulator has served since it started (or since ``reset_stats``).

    Fields read as attributes or as keys: ``server.stats.faults == server.stats["faults"]``.
    """
    requests: int = 0                                            # every request received
    faults: int = 0                                              # injected faults, all kinds
    faults_by_kind: dict[str, int] = field(default_factory=dict)  # injected faults by kind
    routes: dict[str, int] = field(default_factory=dict)         # requests by route (search, image, media, ...)
    range_requests: int = 0                                      # file requests that carried a Range header

    def __getitem__(self, key: str) -> object:
        if key not in self.__dataclass_fields__:
            raise KeyError(f"{key!r}; stats have {', '.join(self.__dataclass_fields__)}")
        return getattr(self, key)

    def keys(self) -> tuple[str, ...]:
        return tuple(self.__dataclass_fields__)


class FaultInjector:
    """Decides faults and counts requests; thread-safe.

    The decision for a request is drawn from an RNG seeded with (seed, method, target, how many times that
    same request was seen before), so a run is reproducible even when a threaded client interleaves its
    requests differently, and a retried request gets a fresh draw.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._seen: Counter[tuple[str, str]] = Counter()
        self._reset_counts()

    def _reset_counts(self) -> None:
        self._requests = 0
        self._faults: Counter[str] = Counter()
        self._routes: Counter[str] = Counter()
        self._ranges = 0

    def count(self, route: str, has_range: bool = False) -> None:
        with self._lock:
            self._requests += 1
            self._routes[route] += 1
            self._ranges += bool(has_range)

    def decide(self, method: str, target: str, group: str, has_body: bool) -> str | None:
        """The fault kind this request gets, or None."""
        config = self.config
        if config.fault_rate <= 0 or group not in config.fault_routes:
            return None
        kinds = applicable_kinds(config.fault_kinds, group, has_body)
        with self._lock:
            repeat = self._seen[(method, target)]
            self._seen[(method, target)] += 1
            if not kinds or (config.max_faults is not None and sum(self._faults.values()) >= config.max_faults):
                return None
            rng = random.Random(f"{config.seed}\0{method}\0{target}\0{repeat}")
            if rng.random() >= config.fault_rate:
                return None
            kind = rng.choice(kinds)
            self._faults[kind] += 1
            return kind

    def stats(self) -> EmulatorStats:
        with self._lock:
            return EmulatorStats(self._requests, sum(self._faults.values()), dict(self._faults), dict(self._routes),
                                 self._ranges)

    def reset_stats(self) -> None:
        """Zero the counters (the fault sequence keeps going; it does not restart)."""
        with self._lock:
            self._reset_counts()
