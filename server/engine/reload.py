"""Zero-downtime model reload from a directory of versioned checkpoints (`server.operations.checkpoint_dir`),
or of the one checkpoint file served (`--checkpoint`) when it changes.

`VersionWatcher` checks the directory (or the file) every `poll_seconds`, and at once when
woken (SIGHUP, a withdrawal). When the best available version (the highest that has not
failed as it is now) is not the one serving (another version, the serving version's file
changed, or the serving version was withdrawn: `server.engine.versions.ServedModel.withdrawn`), it:

1. waits until at most one version is resident (a previous swap's version is freed once the
   last batch and the last request pinned to it are done), so never more than two are;
2. loads the file off the event loop: `load_checkpoint` validates the format, the names and
   shapes of every tensor and the content checksum;
3. prepares it beside the serving version (`server.engine.versions.Versions.prepare`): same config
   and tables, so every compiled executable is reused with no compilation; one batch scored,
   all finite;
4. swaps it in on the event loop, between two batches (`Versions.swap`). Batches already
   packed finish on the old version, and a request split across batches stays on the version
   its first window was packed for (`server.scheduling.batcher`): each response's `model_version` names
   the one version that scored all of it. `on_swap` then updates GetModelInfo and metrics.

A version that fails any step is refused with one log line and `phoenix_reload_failures_total`
and the serving version keeps serving; it is not retried until its file changes. An
unexpected exception while loading or preparing one (a bug) refuses it the same way, with its
traceback; the checks' own loop (`_run`) logs and survives any other. A rollback is
removing the newest version: the next one down is then the best available and is swapped in
the same way. A withdrawn version whose file is corrupt or whose scores were non-finite is
refused as its file is (`refuse_serving`): the next best serves instead, or, with one file,
nothing until the file changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from model.checkpoint import Checkpoint, load_checkpoint
from model.errors import CheckpointError
from server.engine.versions import ServedModel, Versions
from server.operations import checkpoint_dir
from server.operations.metrics import Metrics

log = logging.getLogger("phoenix.reload")

RESIDENT_POLL_SECONDS = 0.05  # how often a pending swap looks whether the old version is freed


class NoServableVersion(CheckpointError):
    """The checkpoint directory holds no version that loads."""


def refuse(refused: set[checkpoint_dir.VersionFile], metrics: Metrics, version: checkpoint_dir.VersionFile,
           error: Exception, serving: checkpoint_dir.VersionFile | None = None,
           bug: bool = False) -> None:  # fmt: skip
    """Record a version that failed: not tried again until its file changes, counted in
    phoenix_reload_failures_total, and one log line (`bug`: an unexpected error while loading
    it, logged with its traceback; the version is refused all the same)."""
    refused.add(version)
    metrics.reload_failures.inc()
    keeps = "" if serving is None else f"; version {serving.number} keeps serving"
    reason = f"{type(error).__name__}: {error}" if bug else error
    log.error("version %d refused: %s%s", version.number, reason, keeps,
              exc_info=error if bug else None,
              extra={"fields": {"event": "reload_refused", "version": version.number}})  # fmt: skip


def load_best(directory: Path, refused: set[checkpoint_dir.VersionFile], metrics: Metrics,
              verify_tables: Callable[[Checkpoint], bool] = lambda c: True,
              ) -> tuple[checkpoint_dir.VersionFile, Checkpoint]:  # fmt: skip
    """Load the best version of `directory` that loads (at start-up); NoServableVersion if
    none does. Versions that fail are refused (`refuse`), whatever the error: a bug in
    loading one must not keep a lower one from serving. `verify_tables(checkpoint)`: whether
    to check its tables now (else the caller checks them later: host-placed tables)."""
    try:
        available = checkpoint_dir.scan(directory)
    except OSError as e:
        raise NoServableVersion(f"{directory}: {e.strerror or e}") from None
    for version in checkpoint_dir.candidates(available, refused):
        try:
            checkpoint = load_checkpoint(version.path, verify_tables=False)
            if verify_tables(checkpoint):
                checkpoint = load_checkpoint(version.path)
            return version, checkpoint
        except CheckpointError as e:
            refuse(refused, metrics, version, e)
        except Exception as e:
            refuse(refused, metrics, version, e, bug=True)
    raise NoServableVersion(
        f"{directory}: no loadable <N>.safetensors version ({len(available)} found)"
    )


class VersionWatcher:
    def __init__(self, directory: Path, poll_seconds: float, versions: Versions,
                 serving: checkpoint_dir.VersionFile, refused: set[checkpoint_dir.VersionFile],
                 metrics: Metrics, on_swap: Callable[[ServedModel], None],
                 one_file: bool = False):  # fmt: skip
        """`one_file`: `directory` is the one checkpoint file served (`--checkpoint`): a new
        version is that file changed, named by its own model_version."""
        self.directory = directory
        self.one_file = one_file
        self.poll_seconds = poll_seconds
        self.versions = versions
        self.serving = serving  # the file of the serving version
        # Each version swapped in or serving at start -> its file as it was loaded.
        self._files: weakref.WeakKeyDictionary[ServedModel, checkpoint_dir.VersionFile] = (
            weakref.WeakKeyDictionary({versions.serving: serving})
        )
        self.refused = refused
        self.metrics = metrics
        self.on_swap = on_swap
        self._wake = asyncio.Event()
        self._checking = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="reload")

    def wake(self) -> None:
        """Check the directory now (SIGHUP, ReloadModel)."""
        self._wake.set()

    @property
    def busy(self) -> bool:
        """A check (or the swap it found) is under way, or one was asked for and is due."""
        return self._checking or self._wake.is_set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a bug here must not stop serving, nor later checks
                log.exception("checking %s for new versions failed", self.directory)
            try:
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def check(self) -> bool:
        """Swap in the best available version if it is not the serving one; True if a swap
        happened."""
        self._checking = True
        try:
            return await self._check()
        finally:
            self._checking = False

    async def _check(self) -> bool:
        try:
            if self.one_file:
                available = [checkpoint_dir.file_version(self.directory)]
            else:
                available = checkpoint_dir.scan(self.directory)
        except FileNotFoundError:
            available = []
        except OSError as e:
            log.warning("cannot read %s: %s; the serving version stays", self.directory, e)
            return False
        withdrawn = self.versions.serving.withdrawn is not None
        for version in checkpoint_dir.candidates(available, self.refused):
            if version == self.serving and not withdrawn:
                return False  # the best one is already serving, its file as it was loaded
            if await self._swap_to(version):
                return True
        return False

    def refuse_serving(self, model: ServedModel) -> None:
        """`model` was withdrawn for its file's bytes (corrupt, or scoring non-finite
        values): its file is not loaded again as it is now (it is once it changes)."""
        version = self._files.get(model)
        if version is not None:
            self.refused.add(version)

    async def _swap_to(self, version: checkpoint_dir.VersionFile) -> bool:
        loop = asyncio.get_running_loop()
        while self.versions.resident > 1:  # the last swap's old version is still in use
            await asyncio.sleep(RESIDENT_POLL_SECONDS)
        started = time.monotonic()
        try:
            checkpoint = await loop.run_in_executor(None, load_checkpoint, version.path)
            name = checkpoint.info.model_version if self.one_file else str(version.number)
            model = await loop.run_in_executor(None, self.versions.prepare, checkpoint, name)
        except (CheckpointError, ValueError) as e:  # ValueError: prepare's checks
            refuse(self.refused, self.metrics, version, e, self.serving)
            return False
        except Exception as e:  # a bug in loading or preparing it: refused all the same
            refuse(self.refused, self.metrics, version, e, self.serving, bug=True)
            return False
        previous = self.versions.swap(model)
        self.serving = version
        self._files[model] = version
        self.metrics.reloads.inc()
        self.on_swap(model)
        seconds = time.monotonic() - started
        log.info(
            "version %d serving (was %s) after %.2fs of loading and checks",
            version.number, previous.version, seconds,
            extra={"fields": {"event": "reloaded", "version": version.number,
                              "previous": previous.version, "seconds": round(seconds, 3)}},
        )  # fmt: skip
        return True
