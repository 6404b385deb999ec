"""What serves now: one table that lookup, roll-out and the `serving.json` follower share.

The loaded versions, the live one per model, canaries, shadows, pinned versions, and why
something does not serve. Only the roll-out (`lifecycle/rollout.py`) and the follower
change it; the registry (`lifecycle/registry.py`) reads it for every request.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from gateway.lifecycle.loading import LoadedModel
from gateway.lifecycle.shadow import Shadow


@dataclass(frozen=True, slots=True)
class CanaryRoute:
    """A canary as the hot path reads it: `weight` % as a share of 2**64, compared with a
    64-bit draw. With a routing key the draw is the key's hash (salted by the model name),
    so a client stays on one side, and raising the weight only moves clients onto the
    canary, never back; without a key it is random."""

    version: str
    weight: float
    threshold: int

    @classmethod
    def of(cls, version: str, weight: float) -> CanaryRoute:
        return cls(version, weight, int(weight / 100 * 2**64))

    def takes(self, name: str, key: bytes | None) -> bool:
        if key is None:
            return random.getrandbits(64) < self.threshold
        digest = hashlib.blake2b(name.encode() + b"\x00" + key, digest_size=8).digest()
        return int.from_bytes(digest, "big") < self.threshold


@dataclass(eq=False)
class ServingTable:
    models: dict[tuple[str, str], LoadedModel] = field(default_factory=dict)
    live: dict[str, str] = field(default_factory=dict)  # model -> live version
    canaries: dict[str, CanaryRoute] = field(default_factory=dict)
    shadows: dict[str, Shadow] = field(default_factory=dict)
    pinned: set[tuple[str, str]] = field(default_factory=set)  # kept loaded when not live
    failures: dict[str, str] = field(default_factory=dict)  # model -> why it does not serve as asked
    wanted: set[str] = field(default_factory=set)  # models the repository holds: each must be served
    background: dict[str, str] = field(default_factory=dict)  # background task -> why it last failed

    def model(self, name: str, version: str | None) -> LoadedModel | None:
        """The named version, or the live one when `version` is None."""
        return self.models.get((name, version if version is not None else self.live.get(name, "")))
