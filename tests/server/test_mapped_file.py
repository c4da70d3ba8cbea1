"""A mapped checkpoint file noticed changing before its pages are read again: through a read
lease (another process truncating it is held until the file is closed here) and, without
one, through the size and time check before each read."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from server.engine import mapped_file
from server.engine.mapped_file import MappedFile, install_lease_handler
from server.errors import Withdrawn


def _file(tmp_path, size=1 << 20):
    path = tmp_path / "tables.bin"
    path.write_bytes(np.arange(size // 4, dtype=np.float32).tobytes())
    return str(path)


def _truncate_in_another_process(path: str) -> float:
    """Seconds the other process's truncate(2) took (a lease holds it until released)."""
    out = subprocess.run(
        [sys.executable, "-c", "import os, sys, time; t = time.monotonic(); "
         "os.truncate(sys.argv[1], 100); print(time.monotonic() - t)", path],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return float(out.stdout)


@pytest.mark.skipif(not hasattr(mapped_file.fcntl, "F_SETLEASE"), reason="Linux leases only")
def test_a_truncation_by_another_process_closes_the_file_before_it_lands(tmp_path):
    assert install_lease_handler()  # pytest runs tests on the main thread
    path = _file(tmp_path)
    changed = threading.Event()
    reasons = []
    f = MappedFile(path, lambda reason: (reasons.append(reason), changed.set()))
    assert f.leased
    with open(path, "rb") as fh:
        view = np.frombuffer(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), np.float32)
    with f.reading():
        assert view[1000] == 1000.0
    seconds = _truncate_in_another_process(path)
    assert changed.wait(10)
    assert seconds < 10  # released at once, not after the kernel's lease-break time (45 s)
    assert "opened for writing or truncated" in reasons[0] and path in reasons[0]
    with pytest.raises(Withdrawn, match="truncated"):  # so no read touches the mapping again
        with f.reading():
            view[1000]  # noqa: B018 - would fault: never reached
    assert os.path.getsize(path) == 100


def test_without_a_lease_a_change_is_noticed_by_the_check_before_each_read(tmp_path, monkeypatch):
    monkeypatch.setattr(mapped_file, "_handler_installed", False)
    path = _file(tmp_path)
    reasons = []
    f = MappedFile(path, reasons.append)
    assert not f.leased
    with f.reading():
        pass
    time.sleep(0.01)  # a later modification time than the file's first (ns clocks can tie)
    with open(path, "r+b") as fh:  # rewritten in place, same size
        fh.write(b"\xff" * 16)
    with pytest.raises(Withdrawn, match="changed while mapped"):
        with f.reading():
            pass
    assert len(reasons) == 1  # told once
    with pytest.raises(Withdrawn):
        with f.reading():
            pass
    assert len(reasons) == 1


def test_closing_it_stops_reads_without_telling_anyone(tmp_path):
    path = _file(tmp_path)
    reasons = []
    f = MappedFile(path, reasons.append)
    f.close("version replaced")
    with pytest.raises(Withdrawn, match="version replaced"):
        with f.reading():
            pass
    assert reasons == []
