"""What makes the emulator behave like the real service under load: rate limits, timing, faults, counters.

Every piece here is settable from the command line and at run time through the admin endpoint
(``/_emulator/config``), and reads back as plain JSON.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from healthimaging_emulator.quotas import (
    MAX_CONCURRENT_COPIES_PER_DATASTORE,
    MAX_FRAMES_PER_COPY,
    profile_rates,
)

#: Fault kinds. ``throttle`` and ``internal_error`` fail the call before it takes effect;
#: ``lost_response`` lets the call take effect and then drops the connection without an answer;
#: ``copy_failed`` (CopyImageSet only) accepts the copy and ends it COPY_FAILED.
FAULT_KINDS = ("throttle", "internal_error", "lost_response", "copy_failed")


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` stored; starts full."""

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def try_acquire(self, at: float | None = None) -> bool:
        """Take a token for a request that arrived at ``at`` (``time.monotonic()``; default now)."""
        with self._lock:
            now = time.monotonic() if at is None else at
            # Requests can be checked in another order than they arrived (threads): never refill backwards.
            self._tokens = min(self.burst, self._tokens + max(0.0, now - self._stamp) * self.rate)
            self._stamp = max(self._stamp, now)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class RateLimiter:
    """Per-operation token buckets; an operation with no bucket is never throttled."""

    def __init__(self, rates: dict[str, tuple[float, float]]) -> None:
        self._buckets = {op: TokenBucket(rate, burst) for op, (rate, burst) in rates.items()}

    @property
    def rates(self) -> dict[str, tuple[float, float]]:
        return {op: (b.rate, b.burst) for op, b in self._buckets.items()}

    def allow(self, operation: str, at: float | None = None) -> bool:
        bucket = self._buckets.get(operation)
        return bucket is None or bucket.try_acquire(at)


@dataclass
class FaultPlan:
    """Random faults by probability per operation, plus a scripted queue that is served first.

    Each operation draws from its own generator seeded with ``f"{seed}:{operation}"``, so the
    sequence of faults an operation sees depends only on the seed and on how many calls of that
    operation came before: the same run replays identically.
    """

    seed: int = 0
    probabilities: dict[str, dict[str, float]] = field(default_factory=dict)
    scripted: dict[str, deque[str]] = field(default_factory=lambda: defaultdict(deque))
    _rngs: dict[str, random.Random] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def draw(self, operation: str) -> str | None:
        """The fault for this call of ``operation``, or None."""
        with self._lock:
            queue = self.scripted.get(operation)
            if queue:
                fault = queue.popleft()
                return None if fault == "none" else fault
            odds = self.probabilities.get(operation)
            if not odds:
                return None
            rng = self._rngs.setdefault(operation, random.Random(f"{self.seed}:{operation}"))
            u = rng.random()
            for kind in FAULT_KINDS:
                p = odds.get(kind, 0.0)
                if u < p:
                    return kind
                u -= p
            return None


def validate_faults(probabilities: dict[str, dict[str, float]], scripted: dict[str, list[str]]) -> None:
    """Raise ValueError naming the bad entry of a fault configuration."""
    for op, odds in probabilities.items():
        if not isinstance(odds, dict):
            raise ValueError(f"faults.{op} must be an object of kind -> probability")
        for kind, p in odds.items():
            if kind not in FAULT_KINDS:
                raise ValueError(f"faults.{op}.{kind}: unknown fault kind; expected one of {', '.join(FAULT_KINDS)}")
            if not isinstance(p, (int, float)) or not 0 <= p <= 1:
                raise ValueError(f"faults.{op}.{kind}: probability must be a number from 0 to 1, got {p!r}")
        if sum(odds.values()) > 1:
            raise ValueError(f"faults.{op}: probabilities add up to more than 1")
        if odds.get("copy_failed") and op != "CopyImageSet":
            raise ValueError(f"faults.{op}.copy_failed: copy_failed applies to CopyImageSet only")
    for op, kinds in scripted.items():
        for kind in kinds:
            if kind not in FAULT_KINDS and kind != "none":
                raise ValueError(
                    f"script.{op}: unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)} or none"
                )


class Counters:
    """Per-operation counters: calls, throttled, faults by kind, errors by code, succeeded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}

    def _entry(self, operation: str) -> dict[str, Any]:
        entry = self._data.get(operation)
        if entry is None:
            entry = {"calls": 0, "succeeded": 0, "throttled": 0, "faults": defaultdict(int), "errors": defaultdict(int)}
            self._data[operation] = entry
        return entry

    def record(self, operation: str, *, outcome: str, fault: str | None = None, error_code: str | None = None) -> None:
        """Count one call. ``outcome`` is ``succeeded``, ``throttled`` or ``error``."""
        with self._lock:
            entry = self._entry(operation)
            entry["calls"] += 1
            if outcome == "succeeded":
                entry["succeeded"] += 1
            elif outcome == "throttled":
                entry["throttled"] += 1
            if fault:
                entry["faults"][fault] += 1
            if error_code:
                entry["errors"][error_code] += 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                op: {**e, "faults": dict(e["faults"]), "errors": dict(e["errors"])}
                for op, e in sorted(self._data.items())
            }

    def reset(self) -> None:
        with self._lock:
            self._data.clear()


@dataclass
class Timing:
    """How long asynchronous work takes: a copy lasts ``copy_fixed_seconds`` plus
    ``copy_per_instance_seconds`` for each SOP instance it copies."""

    copy_fixed_seconds: float = 2.0
    copy_per_instance_seconds: float = 0.02
    update_seconds: float = 1.0
    delete_seconds: float = 1.0
    datastore_seconds: float = 1.0
    import_seconds: float = 1.0

    def copy_duration(self, instances: int) -> float:
        return self.copy_fixed_seconds + self.copy_per_instance_seconds * instances


class Realism:
    """The emulator's live realism settings, changed as one unit by the admin endpoint."""

    def __init__(
        self,
        *,
        profile: str = "aws",
        rate_overrides: dict[str, tuple[float, float]] | None = None,
        timing: Timing | None = None,
        seed: int = 0,
        faults: dict[str, dict[str, float]] | None = None,
        max_frames_per_copy: int = MAX_FRAMES_PER_COPY,
        max_concurrent_copies: int = MAX_CONCURRENT_COPIES_PER_DATASTORE,
    ) -> None:
        self.counters = Counters()
        self.timing = timing or Timing()
        self.max_frames_per_copy = max_frames_per_copy
        self.max_concurrent_copies = max_concurrent_copies
        self._lock = threading.Lock()
        self._set_rates(profile, rate_overrides or {})
        validate_faults(faults or {}, {})
        self.faults = FaultPlan(seed=seed, probabilities=dict(faults or {}))

    def _set_rates(self, profile: str, overrides: dict[str, tuple[float, float]]) -> None:
        rates = profile_rates(profile)
        for op, (rate, burst) in overrides.items():
            if rate is None or rate <= 0:
                rates.pop(op, None)
            else:
                rates[op] = (float(rate), float(burst))
        self.profile = profile
        self.rate_overrides = dict(overrides)
        self.limiter = RateLimiter(rates)

    def describe(self) -> dict[str, Any]:
        """The settings as JSON (what GET /_emulator/config returns)."""
        return {
            "profile": self.profile,
            "rates": {op: {"rate": r, "burst": b} for op, (r, b) in sorted(self.limiter.rates.items())},
            "timing": vars(self.timing).copy(),
            "seed": self.faults.seed,
            "faults": self.faults.probabilities,
            "script": {op: list(q) for op, q in self.faults.scripted.items() if q},
            "max_frames_per_copy": self.max_frames_per_copy,
            "max_concurrent_copies": self.max_concurrent_copies,
        }

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply a partial configuration (admin POST /_emulator/config); raise ValueError on bad input.

        Keys: ``profile``; ``rates`` ({op: {rate, burst}} or {op: null} to unthrottle);
        ``timing`` (any Timing field); ``seed`` (restarts the fault generators);
        ``faults`` ({op: {kind: probability}}, replaces the table); ``script``
        ({op: [kind, ...]}, appended to the scripted queue); ``max_frames_per_copy``;
        ``max_concurrent_copies``.
        """
        unknown = set(changes) - {
            "profile",
            "rates",
            "timing",
            "seed",
            "faults",
            "script",
            "max_frames_per_copy",
            "max_concurrent_copies",
        }
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        # Validate everything before changing anything: a rejected change leaves every setting as it was.
        for key in ("rates", "timing", "faults", "script"):
            if key in changes and not isinstance(changes[key], dict):
                raise ValueError(f"{key}: must be a JSON object, got {changes[key]!r}")
        for op, kinds in (changes.get("script") or {}).items():
            if not isinstance(kinds, list):
                raise ValueError(f"script.{op}: must be a list of fault kinds, got {kinds!r}")
        timing = changes.get("timing") or {}
        for key, value in timing.items():
            if not hasattr(self.timing, key):
                raise ValueError(f"timing.{key}: unknown; expected one of {', '.join(vars(self.timing))}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"timing.{key}: must be a number of seconds >= 0, got {value!r}")
        seed = changes.get("seed", None)
        if "seed" in changes:
            try:
                if isinstance(seed, (bool, float)):
                    raise TypeError
                seed = int(seed)
            except (TypeError, ValueError):
                raise ValueError(f"seed: must be a whole number, got {changes['seed']!r}") from None
        for key in ("max_frames_per_copy", "max_concurrent_copies"):
            if key in changes:
                value = changes[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{key}: must be a whole number >= 1, got {value!r}")
        with self._lock:
            faults = changes.get("faults", self.faults.probabilities)
            script = changes.get("script", {})
            validate_faults(faults, script)
            if "profile" in changes or "rates" in changes:
                overrides = dict(self.rate_overrides)
                for op, spec in (changes.get("rates") or {}).items():
                    overrides[op] = (None, None) if spec is None else _rate_spec(op, spec)
                profile = changes.get("profile", self.profile)
                if "profile" in changes and "rates" not in changes:
                    overrides = {}
                self._set_rates(profile, overrides)  # raises before changing anything on a bad profile
            for key, value in timing.items():
                setattr(self.timing, key, float(value))
            if "seed" in changes or "faults" in changes:
                kept_script = self.faults.scripted
                self.faults = FaultPlan(seed=self.faults.seed if seed is None else seed, probabilities=dict(faults))
                self.faults.scripted = kept_script
            for op, kinds in script.items():
                self.faults.scripted[op].extend(kinds)
            for key in ("max_frames_per_copy", "max_concurrent_copies"):
                if key in changes:
                    setattr(self, key, changes[key])
        return self.describe()


def _rate_spec(op: str, spec: Any) -> tuple[float, float]:
    if not isinstance(spec, dict) or "rate" not in spec:
        raise ValueError(f'rates.{op}: expected {{"rate": r, "burst": b}} or null')
    rate = spec["rate"]
    burst = spec.get("burst", max(1.0, float(rate)))
    if not isinstance(rate, (int, float)) or rate <= 0 or not isinstance(burst, (int, float)) or burst < 1:
        raise ValueError(f"rates.{op}: rate must be > 0 and burst >= 1, got {spec!r}")
    return float(rate), float(burst)
