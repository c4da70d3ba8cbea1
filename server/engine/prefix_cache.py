"""Which slab slot holds which encoded prefix: an LRU index over one `model.prefix.PrefixSlab`.

A slot holds one request's encoded user + history (every layer's keys/values). The key is
`prefix_key(model_version, request)`: the version, then a digest of every user and history
array of the request (`request.columns`: whatever the schema says the prefix is), so a user's
next request with the same history finds its prefix already encoded, and a reloaded model
never reads a prefix another version encoded.
With reuse off (`--prefix-cache-bytes 0`), the key is the request object itself: its windows
still share one encoding, nothing is shared across requests.

Life of an entry: `acquire` (packing a batch, on the event loop) returns it pinned, with
`hit` telling whether its slot is already encoded or about to be by an earlier batch; the
device thread encodes the misses, marks them `written`, and `release`s every entry once its
batch is done. A pinned entry is never evicted, so a slot is not overwritten while a queued
batch still reads it; the slab must have a slot for every entry that can be pinned at once
(`server.engine.runner` sizes it: batches in flight x rows per batch, plus the cache's own slots).
If the batch that was to encode an entry fails, the entry stays unwritten and the next batch
that reads it encodes it first, from its own copy of the request (`unwritten`). Thread-safe: one lock, held for microseconds.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from request.columns import SCHEMA, EncodedRequest
from server.operations.metrics import CacheStats


def prefix_key(model_version: str, request: EncodedRequest) -> tuple[str, bytes]:
    """What identifies an encoded prefix: the model version and a 128-bit digest of every
    prefix array of the request (`request.columns.Schema.prefix_digest`)."""
    return model_version, SCHEMA.prefix_digest(request)


@dataclass(eq=False)
class Entry:
    key: Hashable
    slot: int
    pins: int = 0
    written: bool = False


class PrefixCache:
    def __init__(self, slots: int, slot_bytes: int):
        if slots < 1:
            raise ValueError(f"a prefix cache needs at least one slot, got {slots}")
        self.slots = slots
        self.slot_bytes = slot_bytes
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[Hashable, Entry] = collections.OrderedDict()
        self._free = list(range(slots - 1, -1, -1))
        self.hits = self.misses = self.evictions = 0

    def acquire(self, key: Hashable) -> tuple[Entry, bool]:
        """The pinned entry for `key` and whether it was a hit (its slot is, or will be
        before this batch runs, encoded). A miss takes a free slot or evicts the least
        recently used unpinned entry. Raises RuntimeError if every slot is pinned."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.pins += 1
                self.hits += 1
                return entry, True
            if self._free:
                slot = self._free.pop()
            else:
                victim = next((e for e in self._entries.values() if not e.pins), None)
                if victim is None:
                    raise RuntimeError(f"all {self.slots} prefix slots are pinned")
                del self._entries[victim.key]
                self.evictions += 1
                slot = victim.slot
            entry = self._entries[key] = Entry(key, slot, pins=1)
            self.misses += 1
            return entry, False

    def written(self, entries: Iterable[Entry]) -> None:
        """Their slots now hold their prefixes (the device thread encoded them)."""
        with self._lock:
            for e in entries:
                e.written = True

    def unwritten(self, entries: Iterable[Entry]) -> list[Entry]:
        with self._lock:
            return [e for e in entries if not e.written]

    def release(self, entries: Iterable[Entry]) -> None:
        """Unpin entries of a batch that is done (run or failed)."""
        with self._lock:
            for e in entries:
                e.pins -= 1

    def forget(self) -> None:
        """The slab's contents were lost (a failed call that had taken it): every entry is
        dropped; pinned ones keep their slots, unwritten, so their batches encode them."""
        with self._lock:
            pinned = [e for e in self._entries.values() if e.pins]
            for e in self._entries.values():
                e.written = False
            self._free = sorted({*range(self.slots)} - {e.slot for e in pinned}, reverse=True)
            self._entries = collections.OrderedDict((e.key, e) for e in pinned)

    def stats(self) -> CacheStats:
        with self._lock:
            n = len(self._entries)
            return CacheStats(self.hits, self.misses, self.evictions, n, n * self.slot_bytes)
