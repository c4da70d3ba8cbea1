"""Model versions on the device: the serving one, a new one prepared beside it, the swap.

A version is a checkpoint's parameters placed on every device (`ServedModel`); with host
placement (`server.engine.placement`) its dense parameters, and its tables mapped from its file
(a new version maps its own file: nothing is copied, so a reload does not double memory).
`Versions` holds the serving one and:

  prepare(checkpoint, version)  puts a new version on the device beside the serving one
      (any thread), after checking it can be served by the executables already compiled: the
      same config and table sizes (so requests hashed for one are valid for the other and no
      shape is recompiled), finite parameters, and finite scores of one batch;
  swap(model)                   serves it from the next packed batch on (on the event loop
      that packs batches, so the swap falls between batches);
  resident                      how many versions' parameters are alive: the serving one,
      and for a while after a swap the one it replaced, until its last batch and the last
      request pinned to it are done (`server.engine.reload` waits for 1 before preparing another).

`server.engine.reload` decides when to prepare and swap; this module only knows how.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from model.checkpoint import Checkpoint
from model.params import TABLE_PREFIX, flatten
from model.tables import TABLES, dense
from request.hashing import hashes_per_table
from server.engine.device import Engine
from server.engine.mapped_file import MappedFile
from server.engine.placement import HostTables

_TABLE_NAMES = {TABLE_PREFIX + t for t in TABLES}


class IncompatibleVersionError(ValueError):
    """A new version whose architecture or tables differ from the serving one's: requests
    already hashed and executables already compiled would not fit it (a restart serves it)."""


@dataclass(eq=False)
class _Standing:
    """Whether a version may serve: None, or why not (it never may again)."""

    withdrawn: str | None = None


@dataclass(frozen=True, eq=False)
class ServedModel:
    """One version of the model, resident on the device."""

    version: str  # what responses' model_version say
    checkpoint: Checkpoint
    params: dict  # the parameter tree on the device (host placement: without the tables)
    host_tables: HostTables | None = None  # host placement: the mapped tables
    _standing: _Standing = field(default_factory=_Standing, repr=False)

    @property
    def withdrawn(self) -> str | None:
        """Why this version may not serve (its file changed or failed its checksums, its
        scores came out non-finite), or None. The batcher refuses and drops its work."""
        return self._standing.withdrawn

    def withdraw(self, reason: str) -> bool:
        """Stop serving this version, for good (any thread); True the first time. Its
        mapped file, if any, is closed: no page of it is read again."""
        if self._standing.withdrawn is not None:
            return False
        self._standing.withdrawn = reason
        if self.host_tables is not None and self.host_tables.file is not None:
            self.host_tables.file.close(reason)
        return True


class Versions:
    def __init__(self, engine: Engine, checkpoint: Checkpoint, version: str, host: bool = False):
        """host: the tables stay in host memory (`server.engine.placement`), mapped from the file,
        which is then watched (`server.engine.mapped_file`): when it changes, `on_file_change(model,
        reason)` is called (any thread)."""
        self.engine = engine
        self.host = host
        self.on_file_change: Callable[[ServedModel, str], None] | None = None
        self._check_finite(checkpoint, version)
        self.serving = self._place(checkpoint, version)
        self._resident = weakref.WeakSet([self.serving])

    def _place(self, checkpoint: Checkpoint, version: str) -> ServedModel:
        params = checkpoint.state.params
        if not self.host:
            return ServedModel(version, checkpoint, self.engine.put(params))
        hashes = hashes_per_table(checkpoint.config)
        file = MappedFile(checkpoint.info.path)
        model = ServedModel(version, checkpoint, self.engine.put(dense(params)),
                            HostTables(checkpoint.tables, hashes, file))  # fmt: skip
        held = weakref.ref(model)  # not the model itself: a cycle would keep it resident
        file.on_change = lambda reason: (m := held()) is not None and self._file_changed(m, reason)
        return model

    def _file_changed(self, model: ServedModel, reason: str) -> None:
        if self.on_file_change is not None:
            self.on_file_change(model, reason)

    def _check_finite(self, checkpoint: Checkpoint, version: str) -> None:
        """ValueError naming the first parameter with a non-finite value (host-placed tables
        are not read whole here: their checksums are checked, and scores are checked)."""
        for name, value in flatten(checkpoint.state.params).items():
            if value.dtype == np.int8 or (self.host and name in _TABLE_NAMES):
                continue  # int8 is finite; a mapped table is not read whole here
            if not np.isfinite(value.astype(np.float32, copy=False)).all():
                raise ValueError(f"version {version}: {name} has non-finite values")

    @property
    def resident(self) -> int:
        return len(self._resident)

    def prepare(self, checkpoint: Checkpoint, version: str) -> ServedModel:
        """Put a new version on the device beside the serving one, ready to swap in (any
        thread). Raises IncompatibleVersionError or ValueError if it cannot serve (see the
        module docstring)."""
        serving = self.serving.checkpoint
        if (checkpoint.config, checkpoint.rows, checkpoint.table_dtype) != (
            serving.config,
            serving.rows,
            serving.table_dtype,
        ):
            raise IncompatibleVersionError(
                f"version {version} changes {config_changes(serving, checkpoint)}; a config "
                "change needs a restart"
            )
        self._check_finite(checkpoint, version)
        model = self._place(checkpoint, version)
        self._resident.add(model)
        # The executables take the parameters as an argument, and these have the serving
        # version's shapes and dtypes: every compiled shape serves them as it is.
        scores = self.engine.check(model.params)
        if scores is not None and not (scores.finite.all() and np.isfinite(scores.values).all()):
            raise ValueError(f"version {version} scores non-finite values")
        return model

    def swap(self, model: ServedModel) -> ServedModel:
        """Serve `model` from the next packed batch on; returns the version it replaces."""
        previous, self.serving = self.serving, model
        return previous


def config_changes(old: Checkpoint, new: Checkpoint) -> str:
    """What differs between two versions' configs and tables, for the refusal message."""
    fields = [f"{k} {a} -> {b}" for k, a, b in zip(old.rows._fields, old.rows, new.rows, strict=True)
              if a != b]  # fmt: skip
    if old.table_dtype != new.table_dtype:
        fields.append(f"table dtype {old.table_dtype} -> {new.table_dtype}")
    a, b = old.config.to_dict(), new.config.to_dict()
    fields += [
        f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]
    return ", ".join(fields) or "nothing visible"


class FailureWindow:
    """When repeated failures withdraw a version: at the `count`-th within `window_s` seconds
    (one batch's non-finite scores can be one bad row; three within a minute are the file or
    the model, not chance). A pure policy: `record(now)` says whether to withdraw."""

    def __init__(self, count: int = 3, window_s: float = 60.0):
        self.count, self.window_s = count, window_s
        self._times: list[float] = []

    def record(self, now: float) -> bool:
        """One failure at `now` (seconds); True when it is the one that withdraws."""
        self._times = [t for t in self._times if now - t < self.window_s] + [now]
        return len(self._times) >= self.count
