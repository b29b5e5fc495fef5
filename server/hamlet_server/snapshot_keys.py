"""The keys that sign episode snapshots: a secret of the deployment, never the bearer token clients hold.

    keys = read_snapshot_keys("/run/hamlet/snapshot-keys")   # None when the path is empty
    mac = keys.sign(payload)                                 # HMAC-SHA256 under the first key
    keys.verify(payload, mac)                                # True when any key of the file made it

The key file holds one key per line (blank lines and surrounding white space ignored), each at least
`MIN_KEY_BYTES` bytes (``openssl rand -hex 32`` makes a good one). The first line signs; every line verifies,
so a rotation lists the new key before the old one until no snapshot signed by the old key is still wanted.
Every replica of one deployment reads the same file. The MAC key is not a line itself but derived from it
per purpose (HMAC of a context label), so a key reused elsewhere by mistake still signs nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MIN_KEY_BYTES", "SnapshotKeys", "read_snapshot_keys"]

MIN_KEY_BYTES = 16
"""Shortest key accepted (128 bits when random)."""

_FLAG = "--snapshot-key-file"
_PURPOSE = b"hamlet.v1 EpisodeSnapshot MAC"


def _derive(secret: bytes) -> bytes:
    return hmac.new(secret, _PURPOSE, hashlib.sha256).digest()


@dataclass(frozen=True)
class SnapshotKeys:
    """The derived MAC keys of one deployment, the signing one first."""

    derived: tuple[bytes, ...]

    @classmethod
    def from_secrets(cls, secrets: Sequence[bytes]) -> SnapshotKeys:
        """Keys from raw secrets (the first signs); ValueError for none or one shorter than `MIN_KEY_BYTES`."""
        if not secrets:
            raise ValueError(f"{_FLAG}: no key given; put at least one key of {MIN_KEY_BYTES}+ bytes in the file")
        for number, secret in enumerate(secrets, 1):
            if len(secret) < MIN_KEY_BYTES:
                raise ValueError(
                    f"{_FLAG}: key {number} is {len(secret)} bytes; a snapshot key needs at least {MIN_KEY_BYTES} "
                    "(make one with `openssl rand -hex 32`)"
                )
        return cls(tuple(_derive(secret) for secret in secrets))

    def sign(self, payload: bytes) -> bytes:
        """HMAC-SHA256 of ``payload`` under the signing (first) key: 32 bytes."""
        return hmac.new(self.derived[0], payload, hashlib.sha256).digest()

    def verify(self, payload: bytes, mac: bytes) -> bool:
        """Whether ``mac`` is the HMAC of ``payload`` under any of the keys (each compared in constant time)."""
        found = False
        for key in self.derived:  # no early exit: the time taken does not say which key matched
            found |= hmac.compare_digest(hmac.new(key, payload, hashlib.sha256).digest(), mac)
        return found


def read_snapshot_keys(path: str) -> SnapshotKeys | None:
    """The keys in file ``path``, one per line; None when ``path`` is empty. ValueError (one line naming the
    flag and the fix) for a missing or unreadable file, one without a key, or a key that is too short."""
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{_FLAG} {path}: no such file; fix the path") from None
    except OSError as exc:
        raise ValueError(f"{_FLAG} {path}: cannot read it ({exc.strerror}); fix the path or its permissions") from None
    secrets = [line.strip() for line in data.splitlines() if line.strip()]
    if not secrets:
        raise ValueError(
            f"{_FLAG} {path}: the file is empty; put a key of {MIN_KEY_BYTES}+ bytes in it "
            "(e.g. `openssl rand -hex 32`), the same on every replica"
        )
    try:
        return SnapshotKeys.from_secrets(secrets)
    except ValueError as exc:
        raise ValueError(str(exc).replace(_FLAG, f"{_FLAG} {path}", 1)) from None
