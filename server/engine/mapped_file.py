"""A checkpoint file that stays memory-mapped while serving (host-placed tables): noticing
that it changes before a page of it is read again.

Reading a mapped page past the end of a file that was truncated kills the process (SIGBUS,
nothing logged); a file rewritten in place changes the rows under the mapping (NaN logits
served OK). So every read of the mapping goes through `MappedFile.reading()`, and the file's
changes are caught in one of two ways, chosen per file at open:

  lease  (Linux `F_SETLEASE` read lease; taken when the serving process owns the file) the
         kernel signals this process (SIGIO) when another one opens the file for writing or
         truncates it, and holds that open or truncate until the lease is released. On the
         signal the file is closed for reading: the read in progress finishes, no read starts
         again, the lease is released (the writer goes on, milliseconds later) and
         `on_change` is told. Nothing is paid per read beyond a lock.
  stat   (no lease: not the file's owner, or a filesystem without leases) the file's size and
         modification time are compared with those at open before every read (one `fstat`,
         about 1 us); a change closes it the same way. A truncation that lands between the
         check and the read can still fault: the log says so at open (a warning naming the
         file), and the process's fatal-signal handler prints the stack that faulted.

Measured (`python bench/table_guard.py`: a 1M x 64 float32 table, pages cached, 2 cores
shared): guarded by a lease or by the stat check, a gather of 2,048 rows costs what the bare
mapping does, within noise (~50 us), and of 11,264 rows ~250-500 us either way; reading the
same rows with `pread` instead of through the mapping (which can never fault) costs 6.9 ms and
26 ms, a system call a row: 100x. Hence the lease, and the stat check where no lease is had.

Leases need a SIGIO handler, which only the main thread may install: `install_lease_handler`
(the server calls it at start). Without it no lease is taken (the stat check is used). The
handler only wakes a thread of this module, which does the rest.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import NamedTuple

from server.errors import Withdrawn

log = logging.getLogger("phoenix.server")

_F_SETLEASE = getattr(fcntl, "F_SETLEASE", None)
_F_GETLEASE = getattr(fcntl, "F_GETLEASE", None)

_lock = threading.Lock()
_leased: weakref.WeakSet[MappedFile] = weakref.WeakSet()
_wake = threading.Event()
_handler_installed = False
_keeper: threading.Thread | None = None


class FileBusy(ValueError):
    """The file is open for writing elsewhere: mapping it now could serve a half-written
    file (a later look, once the writer is done, may)."""


class FileState(NamedTuple):
    """What says a file changed: its identity, size and modification time."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileState:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def install_lease_handler() -> bool:
    """Route SIGIO (a broken lease) to this module; True if installed. Main thread only."""
    global _handler_installed
    if _F_SETLEASE is None or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGIO, lambda _signum, _frame: _wake.set())
    _handler_installed = True
    return True


class MappedFile:
    """One mapped checkpoint file of a serving version (see the module docstring)."""

    def __init__(self, path: str, on_change: Callable[[str], None] | None = None):
        """`on_change(reason)`: called once, from any thread, when the file is closed because
        it changed (not when `close` is called). `FileBusy` if another process has the file
        open for writing (known when a lease is asked for)."""
        self.path = path
        self.on_change = on_change
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.state = FileState.of(os.fstat(self._fd))
        self._lock = threading.Lock()
        self._closed: str | None = None  # why no read may start
        self.leased = self._take_lease()

    def _take_lease(self) -> bool:
        if not _handler_installed:
            return False
        try:
            fcntl.fcntl(self._fd, _F_SETLEASE, fcntl.F_RDLCK)
        except OSError as e:
            if e.errno == errno.EAGAIN:  # the kernel's word: another process has it open to write
                os.close(self._fd)
                raise FileBusy(f"{self.path} is open for writing by another process: not "
                               "served while it may change") from None  # fmt: skip
            why = {errno.EACCES: "not its owner", errno.EPERM: "not its owner"}.get(
                e.errno, e.strerror
            )
            log.warning("%s: no lease (%s): a change is noticed by a size and time check before "
                        "each read; truncating it while it serves may still kill the process",
                        self.path, why, extra={"fields": {"event": "no_lease"}})  # fmt: skip
            return False
        with _lock:
            _leased.add(self)
            _start_keeper()
        return True

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Around every read of the mapping: raises `Withdrawn` if the file changed (and
        closes it), else holds off a lease break until the read is done."""
        changed = None
        with self._lock:
            if self._closed is None and not self.leased:
                now = FileState.of(os.fstat(self._fd))
                if now != self.state:
                    changed = f"{self.path} changed while mapped ({_difference(self.state, now)})"
                    self._close_locked(changed)
            closed = self._closed
            if closed is None:
                yield
                return
        if changed is not None:
            self._changed(changed)
        raise Withdrawn(closed)

    @property
    def closed(self) -> str | None:
        return self._closed

    def close(self, reason: str = "closed") -> None:
        """Stop reading it (waits for a read in progress) and release it. Idempotent."""
        with self._lock:
            self._close_locked(reason)

    def _close_locked(self, reason: str) -> None:
        if self._closed is not None:
            return
        self._closed = reason
        with contextlib.suppress(OSError):
            os.close(self._fd)  # releases the lease: a blocked writer goes on
        with _lock:
            _leased.discard(self)

    def _lease_broken(self) -> bool:
        if self._closed is not None:
            return False
        try:
            return fcntl.fcntl(self._fd, _F_GETLEASE) != fcntl.F_RDLCK
        except OSError:
            return True

    def _broken(self) -> None:
        """The kernel began breaking the lease: someone opens the file for writing or
        truncates it, and waits for us."""
        reason = f"{self.path} was opened for writing or truncated while mapped"
        with self._lock:
            if self._closed is not None:
                return
            self._close_locked(reason)
        self._changed(reason)

    def _changed(self, reason: str) -> None:
        log.error("%s; its version stops serving", reason,
                  extra={"fields": {"event": "checkpoint_changed", "path": self.path}})  # fmt: skip
        if self.on_change is not None:
            self.on_change(reason)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _difference(before: FileState, after: FileState) -> str:
    if (before.device, before.inode) != (after.device, after.inode):
        return "another file"
    if before.size != after.size:
        return f"{before.size} -> {after.size} bytes"
    return "modified"


def _start_keeper() -> None:
    """The thread that handles broken leases (started once, with the first lease)."""
    global _keeper
    if _keeper is None:
        _keeper = threading.Thread(target=_keep, name="lease-keeper", daemon=True)
        _keeper.start()


def _keep() -> None:
    while True:
        _wake.wait()
        _wake.clear()
        with _lock:
            files = list(_leased)
        for mapped in files:
            if mapped._lease_broken():
                mapped._broken()
