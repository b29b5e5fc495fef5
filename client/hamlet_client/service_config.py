"""The channel's gRPC service config: gRPC's own retries of idempotent calls, and balancing over replicas.

The SDK writes no retry loop of its own. `service_config` gives the channel (option ``grpc.service_config``)
a ``retryPolicy`` (gRPC's retry design, A6) for the calls that are safe to send again, and, when the target
names several replicas, ``round_robin`` with client-side health checking:

- ``Predict``, ``ListModels``, ``GetModelMetadata``, ``GetServerInfo``, ``ListSessions``: idempotent; retried
  on UNAVAILABLE (the server was unreachable, or refused the call while draining: nothing was done).
- ``StreamEpisode`` is NOT under gRPC's policy: grpcio 1.85 leaves a retried stream open hanging when its
  replica shuts down under it (the viewer's reopen during a drain never returned, tests/e2e/
  test_viewer_states_browser.py). The SDK opens an episode again itself instead, with the same policy
  (`RetryPolicy.backoff`), when the open failed with UNAVAILABLE before any answer (refused by a draining
  replica, or no replica reachable): nothing was started, and each open is a new pick of the balancer. Once
  started, an episode survives a replica through its snapshots (``resume=True``).
- ``WatchEpisodes`` is not retried.

Each retry is a new pick of the load balancer, so with several replicas it goes to the next one. The wait
before retry ``n`` is a uniform draw in ``[0, min(initial_backoff * multiplier**(n-1), max_backoff)]``
(gRPC always jitters), all inside the call's deadline. Other codes (RESOURCE_EXHAUSTED included: a limit is
not lifted by asking again at once) are never retried.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

__all__ = ["HEALTH_SERVICE", "IDEMPOTENT_METHODS", "MAX_ATTEMPTS_LIMIT", "MIN_BACKOFF", "RetryPolicy", "service_config"]

SERVICE = "hamlet.v1.InferenceService"
IDEMPOTENT_METHODS = ("Predict", "ListModels", "GetModelMetadata", "GetServerInfo", "ListSessions")
"""The methods under gRPC's retry policy (StreamEpisode opens are retried by the SDK, see the module doc)."""
HEALTH_SERVICE = "hamlet.v1.Liveness"
"""The grpc.health.v1 name a balancing channel watches per replica: SERVING while the process takes work,
NOT_SERVING from the first moment of a drain (so the channel stops sending new calls there at once)."""
MAX_ATTEMPTS_LIMIT = 5
"""gRPC caps ``maxAttempts`` at 5 (larger values are silently lowered); the SDK refuses them instead."""
MIN_BACKOFF = 0.01
"""Seconds. grpcio 1.85 loses the retry timer of a policy whose backoffs are under 2 ms (half the calls then
wait for their deadline instead of retrying); the SDK refuses backoffs under 10 ms."""


@dataclass(frozen=True)
class RetryPolicy:
    """How gRPC retries the idempotent calls (see the module doc) on UNAVAILABLE.

    ``max_attempts`` counts every attempt, the first included (1 turns retries off; at most 5, gRPC's cap).
    The backoff before retry ``n`` is drawn uniformly from ``[0, min(initial_backoff * multiplier**(n-1),
    max_backoff)]``; retries stop when the call's deadline passes.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.05
    """Seconds; at least `MIN_BACKOFF`."""
    max_backoff: float = 1.0
    """Seconds; at least `MIN_BACKOFF`."""
    multiplier: float = 2.0
    """Growth of the backoff per retry; > 0."""

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(
                f"RetryPolicy.max_attempts: expected 1..{MAX_ATTEMPTS_LIMIT} (gRPC's cap; 1 = no retries), "
                f"got {self.max_attempts!r}"
            )
        for name in ("initial_backoff", "max_backoff"):
            if not getattr(self, name) >= MIN_BACKOFF:
                raise ValueError(
                    f"RetryPolicy.{name}: expected at least {MIN_BACKOFF} s (shorter backoffs make grpcio lose the "
                    f"retry), got {getattr(self, name)!r}"
                )
        if not self.multiplier > 0:
            raise ValueError(f"RetryPolicy.multiplier: expected a number > 0, got {self.multiplier!r}")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry ``retry`` (1 = the first retry), drawn as gRPC draws it: uniformly from
        ``[0, min(initial_backoff * multiplier**(retry - 1), max_backoff)]``."""
        return random.uniform(0.0, min(self.initial_backoff * self.multiplier ** (retry - 1), self.max_backoff))

    def as_json(self) -> dict[str, Any]:
        """gRPC's ``retryPolicy`` object; needs ``max_attempts >= 2`` (gRPC refuses fewer)."""
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": _duration(self.initial_backoff),
            "maxBackoff": _duration(self.max_backoff),
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }


def service_config(retry: RetryPolicy, *, balance: bool) -> str:
    """The JSON service config of a client channel: ``retry`` on the idempotent methods (none when
    ``retry.max_attempts`` is 1), and with ``balance`` ``round_robin`` over the target's addresses with
    health checking of `HEALTH_SERVICE` (a replica that does not offer grpc.health.v1 counts as healthy)."""
    config: dict[str, Any] = {}
    if retry.max_attempts > 1:
        methods = [{"service": SERVICE, "method": method} for method in IDEMPOTENT_METHODS]
        config["methodConfig"] = [{"name": methods, "retryPolicy": retry.as_json()}]
    if balance:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": HEALTH_SERVICE}
    return json.dumps(config, separators=(",", ":"))


def _duration(seconds: float) -> str:
    """A protobuf JSON duration: ``0.05`` -> ``"0.05s"`` (nanosecond precision, at least 1 ns)."""
    nanos = max(round(seconds * 1e9), 1)
    whole, frac = divmod(nanos, 1_000_000_000)
    return f"{whole}.{frac:09d}".rstrip("0").rstrip(".") + "s"
