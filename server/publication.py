"""Version publication: which model version serves, what the service says of it, and when a
version may not serve any more.

first_version  the version to start with: the highest valid one of --checkpoint-dir, or the
               --checkpoint file (tables placed on the device checked against their checksums
               now, host-placed ones after SERVING: `verify_tables`)
Publication    publishes each version that serves (GetModelInfo, phoenix_model_info, the
               front's readiness), withdraws one whose file changed, failed its checksums or
               scored non-finite values (calls refused UNAVAILABLE, health NOT_SERVING, until
               another serves), and drives the watcher that finds new versions
               (`server.engine.reload`; SIGHUP, ReloadModel)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from model.checkpoint import Checkpoint, default_checkpoint_path, load_checkpoint, verify_file
from model.errors import CheckpointError
from request.actions import ACTIONS
from request.features import VOCABULARIES
from server.config import Limits, ServerConfig
from server.door.transport import Front
from server.engine.reload import VersionWatcher, load_best
from server.engine.runner import ModelRunner
from server.engine.versions import FailureWindow, ServedModel
from server.errors import FailedPrecondition
from server.operations.checkpoint_dir import ReloadState, VersionFile, file_version
from server.operations.metrics import Metrics
from server.rpc import ranking_pb2 as pb

log = logging.getLogger("phoenix.server")


def first_version(config: ServerConfig, metrics: Metrics, refused: set[VersionFile],
                  on_device: Callable[[Checkpoint], bool]
                  ) -> tuple[VersionFile, Checkpoint, str | None]:  # fmt: skip
    """(its file, the checkpoint, the version responses name: the file's number with
    --checkpoint-dir, else None: the checkpoint's own). `on_device(checkpoint)`: its tables
    will be placed on the device, so they are read whole, and checked, now. Versions of
    --checkpoint-dir that cannot serve are added to `refused`. CheckpointError or ValueError
    when nothing can serve."""
    if config.checkpoint_dir is not None:
        if config.checkpoint is not None:
            raise ValueError("--checkpoint and --checkpoint-dir exclude each other")
        version_file, checkpoint = load_best(config.checkpoint_dir, refused, metrics, on_device)
        return version_file, checkpoint, str(version_file.number)
    path = config.checkpoint or default_checkpoint_path()
    version_file = file_version(path)  # before loading: a change meanwhile shows
    checkpoint = load_checkpoint(path, verify_tables=False)
    if on_device(checkpoint):
        checkpoint = load_checkpoint(path)
    return version_file, checkpoint, None


def describe(runner: ModelRunner, limits: Limits, checkpoint_sha256: str | None = None
             ) -> pb.ModelInfo:  # fmt: skip
    """GetModelInfo's answer: the serving model version and the serving limits.
    `checkpoint_sha256`: the file's, once known (default: as loaded; "" until verified)."""
    c, m, h = runner.config, runner.config.model, runner.config.hash_config
    ckpt = runner.model.checkpoint
    info, rows = ckpt.info, ckpt.rows
    engine = runner.engine
    return pb.ModelInfo(
        model_version=runner.model.version,
        actions=list(ACTIONS),
        history_seq_len=c.history_seq_len,
        candidate_seq_len=c.candidate_seq_len,
        max_candidates_per_request=limits.max_candidates_per_request,
        max_history_events=limits.max_history_events,
        checkpoint_sha256=info.file_sha256 if checkpoint_sha256 is None else checkpoint_sha256,
        checkpoint_created_at=info.created_at,
        emb_size=c.emb_size,
        num_layers=m.num_layers,
        num_q_heads=m.num_q_heads,
        num_kv_heads=m.num_kv_heads,
        key_size=m.key_size,
        widening_factor=m.widening_factor,
        attn_output_multiplier=m.attn_output_multiplier,
        **{vocab: getattr(c, vocab) for vocab in VOCABULARIES},
        num_user_hashes=h.num_user_hashes,
        num_item_hashes=h.num_item_hashes,
        num_author_hashes=h.num_author_hashes,
        rope_positions=c.rope_positions,
        history_attention=c.history_attention,
        user_table_rows=rows.user,
        post_table_rows=rows.post,
        author_table_rows=rows.author,
        num_parameters=runner.model.checkpoint.num_parameters,
        compute_dtype=engine.dtype.name,
        backend=engine.backend,
        table_dtype=ckpt.table_dtype,
        table_placement=runner.placement,
        table_bytes=ckpt.table_bytes,
        table_sharding=engine.sharding,
    )


class Publication:
    """The versions of one server: the serving one published, a broken one withdrawn, new
    ones found by the watcher. Runs on the event loop unless a method says otherwise;
    `attach` the front before serving."""

    def __init__(self, config: ServerConfig, runner: ModelRunner, metrics: Metrics,
                 version_file: VersionFile, refused: set[VersionFile]):  # fmt: skip
        self.config = config
        self.runner = runner
        self.metrics = metrics
        self.version_file = version_file
        self.refused = refused
        self.verified: dict[str, str] = {}  # checkpoint path -> file sha256, checked later
        self.watcher: VersionWatcher | None = None
        self.front: Front | None = None
        self._failures: dict[int, FailureWindow] = {}  # per version: its non-finite batches
        self._loop: asyncio.AbstractEventLoop | None = None
        self.metrics.table_verification.set(1 if runner.model.checkpoint.info.file_sha256 else 0)
        self.info = describe(runner, config.limits, self.checkpoint_sha256(runner.model.checkpoint))
        self._label_model()

    def attach(self, front: Front) -> None:
        """On the loop: the front that publishes, and is held, from now on."""
        self.front = front
        self._loop = asyncio.get_running_loop()
        self.runner.versions.on_file_change = self._file_changed

    def _label_model(self) -> None:
        """phoenix_model_info: one series, the serving version's."""
        model, c, engine = self.runner.model, self.runner.config, self.runner.engine
        self.metrics.model_info.clear()
        ckpt = model.checkpoint
        self.metrics.model_info.labels(
            model.version, self.checkpoint_sha256(ckpt), engine.backend,
            engine.dtype.name, str(c.history_seq_len), str(c.emb_size),
            str(c.model.num_layers), ckpt.table_dtype, self.runner.placement,
            str(ckpt.table_bytes),
        ).set(1)  # fmt: skip

    def checkpoint_sha256(self, checkpoint: Checkpoint) -> str:
        """The file's sha256: known at load, or once `verify_tables` has read it ("" before)."""
        return checkpoint.info.file_sha256 or self.verified.get(checkpoint.info.path, "")

    def _swapped(self, model: ServedModel) -> None:
        """A new version serves: GetModelInfo and phoenix_model_info follow it, and the
        server takes traffic again if it was held for want of a servable version."""
        if model.checkpoint.info.file_sha256:
            self.metrics.table_verification.set(1)
        self.info = describe(self.runner, self.config.limits,
                             self.checkpoint_sha256(model.checkpoint))  # fmt: skip
        self._label_model()
        self.front.publish(self.info)
        if model.withdrawn is None:
            self.metrics.serving_withdrawn.set(0)
            self.front.hold(None)

    def withdraw(self, model: ServedModel, reason: str, kind: str) -> None:
        """`model` may not serve any more (`kind`: changed, corrupt or non_finite; see
        phoenix_withdrawals_total). If it is the serving version, calls are refused
        UNAVAILABLE with the reason (health NOT_SERVING) until another version serves: the
        watcher looks for one at once (with --checkpoint-dir the best other valid version,
        or this file again once it changes; a corrupt or non-finite file is not tried again
        as it is)."""
        if not model.withdraw(reason):
            return
        self.metrics.withdrawals.labels(kind).inc()
        serving = model is self.runner.model
        log.error("model version %s withdrawn (%s): %s%s", model.version, kind, reason,
                  "" if serving else " (it was no longer serving)",
                  extra={"fields": {"event": "withdrawn", "version": model.version,
                                    "reason": kind, "path": model.checkpoint.info.path}})  # fmt: skip
        if self.watcher is not None and kind != "changed":
            self.watcher.refuse_serving(model)
        if not serving:
            return
        self.metrics.serving_withdrawn.set(1)
        self.front.hold(f"model version {model.version} withdrawn: {reason}")
        if self.watcher is not None:
            self.watcher.wake()

    def non_finite(self, model: ServedModel) -> None:
        """A batch of `model` scored non-finite values (its calls answered DATA_LOSS): the
        third within a minute withdraws it (`server.engine.versions.FailureWindow`)."""
        window = self._failures.setdefault(id(model), FailureWindow())
        if window.record(time.monotonic()):
            self.withdraw(model, "it scored non-finite values in 3 batches within a minute",
                          "non_finite")  # fmt: skip

    def _file_changed(self, model: ServedModel, reason: str) -> None:
        """Any thread: a version's mapped file changed (`server.engine.mapped_file`)."""
        try:
            self._loop.call_soon_threadsafe(self.withdraw, model, reason, "changed")
        except RuntimeError:  # the server stopped meanwhile
            pass

    def verify_tables(self) -> threading.Thread | None:
        """Host-placed tables not yet checked: read the serving version's file once, on a
        thread of its own, against its recorded checksums (`model.checkpoint.verify_file`);
        then GetModelInfo and phoenix_model_info carry its sha256. A mismatch is logged as
        an error naming the tensor, sets phoenix_table_verification to -1 and withdraws the
        version."""
        model = self.runner.model
        checkpoint = model.checkpoint
        if self.checkpoint_sha256(checkpoint):
            return None
        loop = asyncio.get_running_loop()

        def run() -> None:
            started = time.monotonic()
            try:
                sha = verify_file(checkpoint.info.path)
            except (CheckpointError, OSError) as e:
                log.error("the serving tables failed verification: %s", e,
                          extra={"fields": {"event": "tables_corrupt"}})  # fmt: skip
                self.metrics.table_verification.set(-1)
                with contextlib.suppress(RuntimeError):  # RuntimeError: the server stopped
                    loop.call_soon_threadsafe(self.withdraw, model, f"its tables failed their "
                                              f"checksums ({e})", "corrupt")  # fmt: skip
                return
            log.info("tables verified in %.1fs (sha256 %s)", time.monotonic() - started, sha,
                     extra={"fields": {"event": "tables_verified"}})  # fmt: skip
            try:
                loop.call_soon_threadsafe(self._verified, checkpoint, sha)
            except RuntimeError:  # the server stopped meanwhile
                pass

        thread = threading.Thread(target=run, name="verify-tables", daemon=True)
        thread.start()
        return thread

    def _verified(self, checkpoint: Checkpoint, sha: str) -> None:
        self.verified[checkpoint.info.path] = sha
        self.metrics.table_verification.set(1)
        if self.runner.model.checkpoint is checkpoint:
            self._swapped(self.runner.model)

    def watch(self) -> None:
        """Start watching --checkpoint-dir (or the --checkpoint file) for new versions."""
        c = self.config
        one_file = c.checkpoint_dir is None
        self.watcher = VersionWatcher(
            Path(self.version_file.path) if one_file else c.checkpoint_dir, c.poll_seconds,
            self.runner.versions, self.version_file, self.refused, self.metrics, self._swapped,
            one_file,
        )  # fmt: skip
        self.watcher.start()

    async def stop(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()

    async def reload(self, check_now: bool) -> ReloadState:
        """ReloadModel (`server.door.service.Admin`): check --checkpoint-dir now when asked, and
        report the serving version; FailedPrecondition without a --checkpoint-dir."""
        if self.config.checkpoint_dir is None:
            raise FailedPrecondition(
                "this server serves one checkpoint (--checkpoint): no --checkpoint-dir to reload"
            )
        if check_now:
            self.check_versions()
        model = self.runner.model
        busy = self.watcher is None or self.watcher.busy  # before warm-up: the first check is due
        return ReloadState(busy, _epoch_seconds(model.checkpoint.info.created_at), model.version)

    def check_versions(self) -> None:
        """SIGHUP: look at --checkpoint-dir (or the --checkpoint file) now."""
        if self.watcher is not None:
            self.watcher.wake()
        else:
            log.info("SIGHUP: the checkpoint is checked once warm-up is done")


def _epoch_seconds(iso_time: str) -> float:
    """An ISO-8601 time as seconds since the epoch; 0 if it does not parse."""
    try:
        return datetime.datetime.fromisoformat(iso_time).timestamp()
    except ValueError:
        return 0.0
