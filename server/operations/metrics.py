"""Prometheus metrics of the service, created against an injected registry.

All names carry the `phoenix_` prefix; histograms have explicit buckets chosen for a ranking
service (sub-millisecond to seconds latencies, batch sizes up to a few hundred requests).
Each series' help text is its documentation: `metrics_table()` renders them all, and the
table in docs/monitoring.md is that rendering
(`python -m server.operations.metrics --update-docs`; a test keeps it in step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import grpc
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from server.operations.doc_tables import ROOT, replace_table
from server.operations.transport_stats import TransportCounts

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
CANDIDATE_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 2800, 4096)
ROWS_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
# Distinct x-client-name values that get a label of their own; later ones count as "other".
MAX_CLIENTS = 32


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        # The standard process_* (CPU, memory, open files), python_gc_* and python_info series
        # of this process (with frontend workers: the device process, which serves /metrics).
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        self.requests = Counter(
            "phoenix_requests",
            "Calls by method and final gRPC code, as their clients saw it (refusals before a "
            "handler, undecodable requests and cancellations included).", ["method", "code"],
            registry=registry,
        )  # fmt: skip
        self.request_latency = Histogram(
            "phoenix_request_latency_seconds", "Call start to response, by method, every code.",
            ["method"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "phoenix_requests_in_flight", "Scoring calls being handled (queued, computing, replying).",
            registry=registry,
        )  # fmt: skip
        self.client_requests = Counter(
            "phoenix_client_requests",
            f"Calls by method and caller: the x-client-name metadata (the first {MAX_CLIENTS} "
            "names seen; later ones count as 'other', calls without one as 'unknown').",
            ["method", "client"], registry=registry,
        )  # fmt: skip
        self.network_delay = Histogram(
            "phoenix_network_delay_seconds",
            "Caller's send (its x-request-send-time-ms metadata) to the server's receipt; the "
            "clocks of caller and server differ, so a negative delay counts as 0.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.request_candidates = Histogram(
            "phoenix_request_candidates", "Candidates per scoring call answered OK.",
            buckets=CANDIDATE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "phoenix_queue_wait_seconds", "Admission to the request's first batch.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "phoenix_queue_depth", "Requests accepted and waiting for a batch.", registry=registry
        )
        self.queue_work = Gauge(
            "phoenix_queue_work_seconds",
            "Estimated device time of the queued requests (what admission bounds).",
            registry=registry,
        )
        self.queue_work_limit = Gauge(
            "phoenix_queue_work_limit_seconds",
            "The bound admission keeps phoenix_queue_work_seconds under (--max-queue-ms).",
            registry=registry,
        )
        self.queue_work_peak = Gauge(
            "phoenix_queue_work_peak_seconds",
            "Highest estimated device time of queued requests since start.",
            registry=registry,
        )
        self.refused = Counter(
            "phoenix_admission_refusals",
            "Requests refused at admission, before any compute, by reason "
            "(queue_full: RESOURCE_EXHAUSTED, by the queue or, before a handler, by the "
            "transport's door; host_busy: RESOURCE_EXHAUSTED, by the door while the host is "
            "behind decoding; capacity: RESOURCE_EXHAUSTED, every call place taken; slow_body: "
            "RESOURCE_EXHAUSTED, by the door, a connection whose request body came too slowly "
            "while places were short, for a while; deadline: "
            "DEADLINE_EXCEEDED). With frontend workers, their refusals before a handler are "
            "reported with their transport counts, every second; no series until the first.",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.dropped = Counter(
            "phoenix_queue_dropped",
            "Accepted requests whose queued work was dropped unrun (all of it, or what was "
            "left of a request split over batches), by reason (cancelled: the call ended, its "
            "client gone; expired: its deadline passed while queued, answered "
            "DEADLINE_EXCEEDED; withdrawn: its version was withdrawn, answered UNAVAILABLE); "
            "no series until the first.",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "phoenix_batch_size", "Distinct requests per executed batch.",
            buckets=BATCH_SIZE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "phoenix_batch_rows", "Occupied rows (request windows) per executed batch.",
            buckets=BATCH_SIZE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch_padding_ratio = Histogram(
            "phoenix_batch_padding_ratio",
            "Fraction of a batch's candidate slots that are padding (0 = perfectly full).",
            buckets=RATIO_BUCKETS, registry=registry,
        )  # fmt: skip
        self.inference = Histogram(
            "phoenix_inference_seconds", "Device time of one batch (forward pass and transfer).",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.table_gather = Histogram(
            "phoenix_table_gather_seconds",
            "Host-placed tables: time to gather one batch's table rows on the host (on its own "
            "thread, while the device runs the batch before); no samples with device placement.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.table_rows_gathered = Histogram(
            "phoenix_table_rows_gathered",
            "Host-placed tables: distinct table rows gathered for one batch, over all its calls "
            "and tables (what crosses to the device: rows x width x 4 bytes, 2 if bfloat16).",
            buckets=ROWS_BUCKETS, registry=registry,
        )  # fmt: skip
        self.table_verification = Gauge(
            "phoenix_table_verification",
            "Host-placed tables are checked against their recorded checksums after start, in "
            "the background: 0 while pending, 1 verified, -1 corrupt (the log says which "
            "tensor); 1 once loaded when the tables were checked at load.",
            registry=registry,
        )
        self.non_finite_batches = Counter(
            "phoenix_non_finite_batches",
            "Batches whose scores came back non-finite (NaN or infinite) for some request: "
            "those requests are answered DATA_LOSS, never OK; repeated ones withdraw the "
            "version (phoenix_withdrawals_total).",
            registry=registry,
        )
        self.device_calls = Counter(
            "phoenix_device_calls",
            "Device calls started (a batch's prefix calls and its chunk call). None starts once "
            "every call waiting for its batch has ended (phoenix_batches_unwanted_total).",
            registry=registry,
        )
        self.batches_unwanted = Counter(
            "phoenix_batches_unwanted",
            "Batches stopped before a device call because every call waiting for them had "
            "ended (cancelled, or past its deadline): work nobody waits for is not computed.",
            registry=registry,
        )
        self.withdrawals = Counter(
            "phoenix_withdrawals",
            "Serving model versions withdrawn, by reason (changed: its mapped file was "
            "written or truncated; corrupt: its tables failed their checksums; non_finite: "
            "repeated non-finite scores). Until another version serves, health is NOT_SERVING "
            "and calls are refused UNAVAILABLE.",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.serving_withdrawn = Gauge(
            "phoenix_serving_withdrawn",
            "1 while no version may serve (the serving one was withdrawn and none replaced "
            "it yet), else 0.",
            registry=registry,
        )
        self.candidates_scored = Counter(
            "phoenix_candidates_scored", "Candidates whose logits were returned.", registry=registry
        )
        self.compilations = Counter(
            "phoenix_compilations",
            "XLA compilations of the forward pass (one per planned shape, during warm-up and "
            "the background compilation after it; more is a bug).",
            registry=registry,
        )
        self.compilation_seconds = Counter(
            "phoenix_compilation_seconds", "Time spent compiling.", registry=registry
        )
        self.warmup_seconds = Gauge(
            "phoenix_warmup_seconds",
            "Start to SERVING: compiling the shapes that hold any request.",
            registry=registry,
        )
        self.shapes_ready = Gauge(
            "phoenix_batch_shapes_ready",
            "Batch shapes compiled; the rest compile in the background while serving.",
            registry=registry,
        )
        self.reloads = Counter(
            "phoenix_reloads", "New model versions swapped in while serving.", registry=registry
        )
        self.reload_failures = Counter(
            "phoenix_reload_failures",
            "Model versions refused (unreadable, corrupt, incompatible or non-finite); the "
            "serving version kept serving.",
            registry=registry,
        )
        self.models_resident = Gauge(
            "phoenix_models_resident",
            "Model versions whose parameters are in memory (2 only during a swap).",
            registry=registry,
        )
        self.model_info = Gauge(
            "phoenix_model_info", "The serving version (value 1; one series).",
            ["version", "checkpoint_sha256", "backend", "dtype", "history_seq_len", "emb_size",
             "num_layers", "table_dtype", "table_placement", "table_bytes"],
            registry=registry,
        )  # fmt: skip

    def labelled(self) -> dict[str, tuple[str, ...]]:
        """The label names of each labelled metric, by metric name."""
        return {m._name: tuple(m._labelnames) for m in vars(self).values()
                if isinstance(m, Counter | Gauge | Histogram) and m._labelnames}  # fmt: skip

    def watch_transport(self, counts: Callable[[], TransportCounts | None]) -> None:
        """Export what gRPC's transport counted (None: unreadable, nothing exported), read at
        scrape."""
        self.registry.register(_TransportCollector(counts))

    def watch_prefix_cache(self, stats: Callable[[], CacheStats], capacity_bytes: int) -> None:
        """Export the runner's prefix cache (`CacheStats`, summed over its slabs), read at scrape."""
        self.registry.register(_PrefixCacheCollector(stats, capacity_bytes))


class CacheStats(NamedTuple):
    """A prefix cache's counts, as exported (`server.engine.prefix_cache` keeps them)."""

    hits: int
    misses: int
    evictions: int
    entries: int  # slots holding a prefix
    bytes: int  # their device bytes


class _TransportCollector(Collector):
    def __init__(self, counts: Callable[[], TransportCounts | None]):
        self.counts = counts
        self._started = self._shed = 0  # exported counters only rise (see transport_stats)

    def collect(self):
        c = self.counts()
        if c is None:
            return
        self._started = max(self._started, c.started)
        self._shed = max(self._shed, c.shed)
        yield CounterMetricFamily(
            "phoenix_transport_calls",
            "Calls gRPC's transport accepted, every method (channelz), including those it "
            "shed before a handler saw them.", value=self._started,
        )  # fmt: skip
        yield CounterMetricFamily(
            "phoenix_transport_calls_shed",
            "Calls gRPC's transport ended itself (status CANCELLED) before any handler saw "
            "them: its backlog was past --max-pending-calls, or the server was stopping.",
            value=self._shed,
        )
        yield GaugeMetricFamily(
            "phoenix_transport_calls_in_flight",
            "Calls gRPC holds now, every method: in its backlog, being handled or answered.",
            value=c.open,
        )


class _PrefixCacheCollector(Collector):
    def __init__(self, stats: Callable[[], CacheStats], capacity_bytes: int):
        self.stats = stats
        self.capacity_bytes = capacity_bytes

    def collect(self):
        s = self.stats()
        yield CounterMetricFamily(
            "phoenix_prefix_cache_hits",
            "Requests whose user+history prefix was already encoded on the device (a later "
            "chunk of the same request counts too).", value=s.hits,
        )  # fmt: skip
        yield CounterMetricFamily(
            "phoenix_prefix_cache_misses", "Prefixes encoded (prefix passes run).", value=s.misses
        )
        yield CounterMetricFamily(
            "phoenix_prefix_cache_evictions",
            "Encoded prefixes dropped to make room (least recently used first).",
            value=s.evictions,
        )
        yield GaugeMetricFamily(
            "phoenix_prefix_cache_bytes", "Device bytes of the encoded prefixes held.",
            value=s.bytes,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "phoenix_prefix_cache_entries", "Encoded prefixes held.", value=s.entries
        )
        yield GaugeMetricFamily(
            "phoenix_prefix_cache_capacity_bytes",
            "Device bytes of the prefix slabs (--prefix-cache-bytes plus the slots of the "
            "batches in flight).", value=self.capacity_bytes,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """One finished call, as the service reports it (`server.door.service.Recorder`)."""

    method: str
    code: grpc.StatusCode
    seconds: float  # call start to its answer
    candidates: int = 0  # over all its ranking requests
    scoring: bool = False  # a scoring call: one `started` preceded it
    client: str = ""  # x-client-name, sanitized ("" none)
    network_delay_s: float | None = None  # from x-request-send-time-ms


class MetricsRecorder:
    """Counts calls in this process's metrics. `in_flight=False` leaves the in-flight gauge
    to the caller (the device process sets it from the frontends' own counts)."""

    def __init__(self, metrics: Metrics, in_flight: bool = True):
        self.metrics = metrics
        self.in_flight = in_flight
        self._clients: set[str] = set()

    def started(self) -> None:
        if self.in_flight:
            self.metrics.in_flight.inc()

    def refused_before_handler(self, method: str | None, reason: str, count: int = 1) -> None:
        """`count` calls of `method` (None: not one of ours) refused before any handler
        (`server.door.call_limits.Door`): RESOURCE_EXHAUSTED."""
        m = self.metrics
        m.refused.labels(reason).inc(count)
        if method is not None:
            m.requests.labels(method, grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc(count)
            m.client_requests.labels(method, "unknown").inc(count)

    def finished(self, record: CallRecord) -> None:
        m = self.metrics
        if record.scoring and self.in_flight:
            m.in_flight.dec()
        if record.scoring and record.code == grpc.StatusCode.OK and record.candidates:
            m.request_candidates.observe(record.candidates)
        m.requests.labels(record.method, record.code.name).inc()
        m.request_latency.labels(record.method).observe(record.seconds)
        m.client_requests.labels(record.method, self._client_label(record.client)).inc()
        if record.network_delay_s is not None:
            m.network_delay.observe(record.network_delay_s)

    def _client_label(self, client: str) -> str:
        """A bounded set of label values: the first MAX_CLIENTS names, then "other"."""
        if not client:
            return "unknown"
        if client in self._clients or len(self._clients) < MAX_CLIENTS:
            self._clients.add(client)
            return client
        return "other"


# The methods counted in phoenix_requests_total (the services' own; not health or reflection).
METHODS = ("Rank", "GetModelInfo", "PredictNextActions", "ReloadModel")


def short_method(full: str) -> str | None:
    """ "/package.Service/Method" -> "Method" if it is one of `METHODS`, else None."""
    name = full.rsplit("/", 1)[-1]
    return name if name in METHODS else None


def metrics_table() -> str:
    """Every exported `phoenix_` series (markdown): name with its labels, type, help text."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.watch_transport(TransportCounts)
    metrics.watch_prefix_cache(lambda: CacheStats(0, 0, 0, 0, 0), 0)
    labels = metrics.labelled()
    lines = ["| series | type | meaning |", "|---|---|---|"]
    for family in registry.collect():
        if not family.name.startswith("phoenix_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        if family.name in labels:
            name += "{" + ",".join(labels[family.name]) + "}"
        lines.append(f"| `{name}` | {family.type} | {family.documentation} |")
    return "\n".join(lines)


DOCUMENTS = (ROOT / "docs" / "monitoring.md",)

if __name__ == "__main__":
    import sys

    if "--update-docs" in sys.argv:
        for path in DOCUMENTS:
            changed = replace_table(path, metrics_table())
            print(f"{path}: {'updated' if changed else 'already current'}")
    else:
        print(metrics_table())
