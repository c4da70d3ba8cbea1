"""The server's configuration: every setting's one definition (default, unit, help text).

`ServerConfig` nests one frozen dataclass per concern. Each leaf field is declared with
`setting(...)`, and that is the only place its default is written: the `serve` flags and their
`PHOENIX_*` environment twins are generated from these fields (`server.flags`), and so is the
options table in docs/options.md. Library code takes these dataclasses, never flags.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from server.cores import DEVICE_PROCESS_CORES, MAX_AUTO_FRONTEND_WORKERS, auto_frontend_workers

MiB = 2**20


def setting(default: Any, help: str, unit: str = "", choices: tuple[str, ...] = ()) -> Any:
    """A config field with its help text; `unit` is shown beside the default."""
    return dataclasses.field(
        default=default, metadata={"help": help, "unit": unit, "choices": choices}
    )


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger requests get INVALID_ARGUMENT naming the field."""

    max_candidates_per_request: int = setting(2800, "most candidates in one request")
    max_history_events: int = setting(4096, "most history events in one request")
    max_history_actions: int = setting(
        4096 * 19, "most action entries over all history events of one request"
    )
    # xAI's home-mixer's largest call (2,800 candidates and 1,022 engagements with the
    # TweetInfo and UserActionMeta fields it sets) is 0.28-0.57 MB depending on the history's
    # form (tests/server/test_largest_call.py): 2 MiB takes it with room for fields we did not
    # model. The limit also bounds what a request may inflate to (server.contracts.inflate) and what one
    # may cost to parse (protobuf's own objects: up to ~24 bytes a byte), so it is no larger.
    max_request_bytes: int = setting(2 * MiB, "largest serialized request", "bytes")
    max_candidate_sets: int = setting(
        64,
        "most candidate sets (users) in one PredictNextActions call; each is ranked as a request",
    )
    default_deadline_ms: float = setting(
        10_000.0, "deadline given to a Rank call that carries none", "ms"
    )


@dataclasses.dataclass(frozen=True)
class ShapeConfig:
    """The compiled batch shapes (see `server.scheduling.buckets`)."""

    max_batch_size: int = setting(
        32, "most rows per call: chunks (a chunk is one request window) or prefixes"
    )
    # 32 is the commonest request size in ranking traffic; without its bucket such a request
    # runs as two chunks of 16 (bench/host_path.py's buckets section measures the difference).
    candidate_buckets: tuple[int, ...] = setting(
        (16, 32, 64, 256),
        "compiled candidate slots per chunk; requests are split into the chunk size that "
        "costs the fewest padded tokens (the prefix is encoded once whatever the chunking)",
    )
    history_buckets: tuple[int, ...] | None = setting(
        None, "compiled history slots; empty: a quarter of the model's history and all of it"
    )
    max_batch_candidates: int | None = setting(
        None, "most candidate slots per batch; empty: 16 x the largest candidate bucket"
    )


@dataclasses.dataclass(frozen=True)
class BatcherConfig:
    """Queueing and batch formation (see `server.scheduling.batcher`)."""

    max_batch_wait_ms: float = setting(
        2.0, "longest a request waits for company while the device is busy", "ms"
    )
    max_queue_ms: float = setting(
        250.0,
        "most estimated device time of queued work ahead of a request; more is refused with "
        "RESOURCE_EXHAUSTED and a retry hint computed from the queue",
        "ms",
    )
    # A call whose deadline is far may wait longer: a crowd of callers with 10 s deadlines may
    # queue up to a second of work (where more than 250 ms of it are in calls at once: with
    # more transport places, or several frontend workers). A tenth keeps what is admitted well
    # within its deadline even when the device-time estimate misses the host's time under
    # load by several times; at 4x open-loop overload with 2 s deadlines the bound stays
    # max_queue_ms.
    queue_deadline_share: float = setting(
        0.1,
        "a request may also be queued behind work of up to this share of its remaining "
        "deadline, when that is more than --max-queue-ms",
    )
    max_queue: int = setting(1024, "most queued requests, whatever their work")
    max_batch_ms: float = setting(
        20.0,
        "most estimated device time of one batch while other requests wait: a larger request "
        "runs as several batches, with the requests that arrived meanwhile between them",
        "ms",
    )
    pipeline_depth: int = setting(2, "batches in flight: one computing, the rest ready")


@dataclasses.dataclass(frozen=True)
class Transport:
    """The gRPC transport: concurrency bounds, connection hygiene and TLS (see server.door.transport).

    Every call's life is bounded: a scoring call that carries no deadline gets
    `Limits.default_deadline_ms`; one whose request body has not arrived within
    `receive_timeout_s` is ended; a connection lives at most `max_connection_age_s` +
    `max_connection_age_grace_s`, idle ones are closed after `max_connection_idle_s`, and one
    that never completes its handshake after `handshake_timeout_s`.
    """

    # Each call holds a handler thread while it waits for its batch. What bounds the work
    # admitted is the queue (max_queue_ms, deadlines), and while the queue is full for a call
    # the transport refuses it before any handler (server.door.call_limits.Door); this bound is what
    # one process's gRPC transport holds at once and still refuses promptly under a flood
    # (server.door.call_limits.MAX_AUTO_CAPACITY says what was measured), within its thread and
    # memory limits. Raise it where each gRPC server has cores to spare.
    max_concurrent_rpcs: int = setting(
        0,
        "scoring calls a gRPC server (each frontend's) holds at once, each on a thread; past "
        "them (or while the queue is full for them) gRPC refuses new calls RESOURCE_EXHAUSTED "
        "with a retry hint, before reading them; 0: 80, within the process's thread and "
        "memory limits",
    )
    # The backlog of calls gRPC's core holds before the server's polling thread takes them.
    # That thread takes ~20,000 calls/s a core (it refuses past max_concurrent_rpcs itself),
    # so the backlog grows only in stalls; past it the core sheds calls with status
    # CANCELLED, counted in phoenix_transport_calls_shed_total (server.operations.transport_stats).
    max_pending_calls: int = setting(
        0,
        "calls gRPC's core holds before the server takes them; past it the core sheds new "
        "calls at random, past 4x all (status CANCELLED); 0: gRPC's default (1,000; 3,000)",
    )
    receive_timeout_s: float = setting(
        5.0,
        "a call whose request body has not arrived this long after its headers is ended "
        "(DEADLINE_EXCEEDED), freeing its place",
        "s",
    )
    max_streams_per_connection: int = setting(
        256, "concurrent calls one HTTP/2 connection may carry (clients queue the rest)"
    )
    max_connection_idle_s: float = setting(
        300.0, "a connection with no call for this long is closed (GOAWAY)", "s"
    )
    max_connection_age_s: float = setting(
        600.0,
        "a connection is asked to go away after this long, so clients rebalance across "
        "replicas; 0: never",
        "s",
    )
    max_connection_age_grace_s: float = setting(
        30.0, "calls on a connection past its age get this long to finish before it closes", "s"
    )
    handshake_timeout_s: float = setting(
        10.0, "a connection that has not completed its HTTP/2 (and TLS) handshake is closed", "s"
    )
    keepalive_time_s: float = setting(
        60.0, "the server pings a connection silent for this long, to find dead peers", "s"
    )
    keepalive_timeout_s: float = setting(
        20.0, "a ping unanswered for this long closes the connection", "s"
    )
    min_client_ping_interval_s: float = setting(
        10.0, "clients pinging more often than this are sent GOAWAY (too_many_pings)", "s"
    )
    tls_cert: Path | None = setting(
        None, "PEM certificate chain: serve gRPC over TLS (needs --tls-key); empty: plaintext"
    )
    tls_key: Path | None = setting(None, "PEM private key of --tls-cert")
    tls_client_ca: Path | None = setting(
        None, "PEM CA bundle: require and verify client certificates (mutual TLS)"
    )
    reflection: bool = setting(True, "serve gRPC server reflection (--reflection 0 turns it off)")
    admin_rpcs: bool = setting(
        False,
        "serve admin calls (xai.recsys.v1 ReloadModel: check --checkpoint-dir now); off, they "
        "answer UNIMPLEMENTED. Anyone who reaches the port can call them: use with mutual TLS",
    )


TABLE_PLACEMENTS = ("auto", "device", "host")  # see server.engine.placement
TABLE_SHARDINGS = ("replicated", "rows")  # see server.engine.device


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """Where the hash tables live (see `server.engine.placement`)."""

    table_placement: str = setting(
        "auto",
        "device: tables copied to the devices; host: tables memory-mapped from the checkpoint "
        "and each batch's rows gathered on the host; auto: host when the tables exceed "
        "--table-device-share of one device's memory",
        choices=TABLE_PLACEMENTS,
    )
    table_device_share: float = setting(
        0.5, "auto placement: the share of one device's memory the tables may take"
    )
    table_sharding: str = setting(
        "replicated",
        "device placement with several devices: replicated (a copy on each) or rows (each "
        "device holds a slice of every table's rows)",
        choices=TABLE_SHARDINGS,
    )


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything `phoenix-ranker serve` can be told."""

    host: str = setting("[::]", "interface gRPC binds")
    port: int = setting(50051, "gRPC port; 0 picks a free one")
    metrics_host: str = setting(
        "127.0.0.1", "interface /metrics binds (a scraped pod sets 0.0.0.0 or its IP)"
    )
    # 9464, not Prometheus's own 9090 (a Prometheus beside the server would collide with it).
    metrics_port: int = setting(9464, "Prometheus /metrics port; 0 picks a free one")
    metrics_tls: bool = setting(
        False, "serve /metrics over HTTPS with --tls-cert/--tls-key (and --tls-client-ca)"
    )
    # /readyz and /healthz are also served on the metrics port; a port of their own is plain
    # HTTP whatever --metrics-tls says (probes carry no client certificate).
    readiness_port: int | None = setting(
        None,
        "a port of its own for GET /readyz (200 only while taking traffic) and /healthz "
        "(liveness), plain HTTP on --metrics-host; xAI's home-mixer polls 9091 by default; "
        "empty: on the metrics port only",
    )
    checkpoint: Path | None = setting(
        None, "safetensors checkpoint to serve; empty: the embedded default model"
    )
    checkpoint_dir: Path | None = setting(
        None,
        "directory of versioned checkpoints <N>.safetensors: the highest valid N serves, and "
        "newer ones are loaded without downtime (excludes --checkpoint)",
    )
    poll_seconds: float = setting(
        5.0, "how often --checkpoint-dir is checked for versions (SIGHUP checks at once)", "s"
    )
    dtype: str | None = setting(
        None,
        "forward dtype; empty: bfloat16 on GPU/TPU, float32 on CPU",
        choices=("float32", "bfloat16"),
    )
    prefix_cache_bytes: int = setting(
        256 << 20,
        "device memory for encoded user+history prefixes kept across requests, so a user's "
        "next request with the same history skips its prefix; 0: no reuse across requests",
        "bytes",
    )
    compilation_cache: Path | None = setting(
        Path("~/.cache/phoenix-ranker/jax"),
        "JAX persistent compilation cache directory: a restart reads its executables instead "
        "of compiling them; empty: off",
    )
    grace_seconds: float = setting(
        15.0,
        "time the whole shutdown may take after SIGTERM: the lame duck (--drain-delay-seconds), "
        "then answering the queued and in-flight requests",
        "s",
    )
    drain_delay_seconds: float = setting(
        5.0,
        "after SIGTERM, readiness (/readyz 503) and gRPC health say NOT_SERVING at once but new "
        "calls are still answered for this long (lame duck), so balancers that poll stop "
        "sending first; then new calls are refused and the rest drains, within --grace-seconds "
        "(xAI's engine waits 20 s)",
        "s",
    )
    log_level: str = setting(
        "info",
        "log level; debug logs one line per request",
        choices=("debug", "info", "warning", "error"),
    )
    log_json: bool = setting(False, "JSON-lines logs instead of text")
    frontend_workers: str = setting(
        "auto",
        "processes that share the gRPC port and do each call's host work (decode, hash, "
        "respond), handing encoded requests to this process; 0: one process does everything; "
        f"auto: one per core beyond the first {DEVICE_PROCESS_CORES}, up to "
        f"{MAX_AUTO_FRONTEND_WORKERS} (cgroup CPU limits counted; on 2 cores: 0)",
    )

    transport: Transport = dataclasses.field(default_factory=Transport)
    limits: Limits = dataclasses.field(default_factory=Limits)
    shapes: ShapeConfig = dataclasses.field(default_factory=ShapeConfig)
    batcher: BatcherConfig = dataclasses.field(default_factory=BatcherConfig)
    tables: TableConfig = dataclasses.field(default_factory=TableConfig)

    def frontend_worker_count(self, cores: int) -> int:
        """The frontend workers to run with `cores` cores (`server.cores.available_cores`):
        `frontend_workers` resolved; ValueError naming the flag for a value that is neither
        auto nor a count."""
        if self.frontend_workers.strip().lower() == "auto":
            return auto_frontend_workers(cores)
        try:
            count = int(self.frontend_workers)
        except ValueError:
            count = -1
        if count < 0:
            raise ValueError(
                f"--frontend-workers: {self.frontend_workers!r} is neither auto nor a count"
            )
        return count
