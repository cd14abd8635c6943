"""Bytes a rank hands to collectives, per kind, so each step's communication is measured."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class CommunicationVolume:
    """Payload bytes and calls per collective kind ("all_reduce", "all_to_all", "all_gather")."""

    bytes_by_kind: dict[str, int]
    calls_by_kind: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_kind.values())


class CommunicationLog:
    """Counts the payload of every collective the parallel DiT issues on this rank.

    Payload is the tensor a rank contributes (what NCCL's bus-bandwidth figures are
    quoted against); a ring all-reduce moves 2(N-1)/N of it over each link.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes: Counter[str] = Counter()
        self._calls: Counter[str] = Counter()

    def record(self, kind: str, payload_bytes: int) -> None:
        with self._lock:
            self._bytes[kind] += payload_bytes
            self._calls[kind] += 1

    def take(self) -> CommunicationVolume:
        """What was recorded since the last take (one step's volume when taken per step)."""
        with self._lock:
            volume = CommunicationVolume(dict(self._bytes), dict(self._calls))
            self._bytes.clear()
            self._calls.clear()
        return volume
