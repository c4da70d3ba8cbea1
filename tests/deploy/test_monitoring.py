"""deploy/prometheus and deploy/grafana against real programs: promtool checks the rules and
the example config and runs the rules' unit tests; a real Prometheus, configured from the
example config, scrapes a real server while Rank calls are sent, loads the rules and answers
every dashboard query; every metric the rules and the dashboard name is one the server exports.

Needs Prometheus's `prometheus` and `promtool` on PATH (Debian/Ubuntu: apt-get install
prometheus). Without them these tests fail rather than skip: CI installs them.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from server.convert import raw_request_to_pb
from server.metrics import LATENCY_BUCKETS
from tests.conftest import ROOT
from tests.helpers import random_request
from tests.server.conftest import SMALL_PLAN
from tests.server.harness import ServerProcess

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "phoenix-ranker.json"
JOB = "phoenix-ranker"

# The dashboard must chart these (the _bucket/_sum/_count of a histogram count as it).
DASHBOARD_MUST_USE = {
    "phoenix_requests_total", "phoenix_request_latency_seconds_bucket",
    "phoenix_requests_in_flight", "phoenix_queue_depth", "phoenix_queue_wait_seconds_bucket",
    "phoenix_queue_work_seconds", "phoenix_batch_size_sum", "phoenix_batch_rows_sum",
    "phoenix_batch_padding_ratio_sum", "phoenix_inference_seconds_bucket",
    "phoenix_candidates_scored_total", "phoenix_compilations_total", "phoenix_model_info",
    "phoenix_reloads_total", "phoenix_reload_failures_total", "phoenix_models_resident",
    "process_cpu_seconds_total", "process_resident_memory_bytes",
}  # fmt: skip

RANK_CALLS = 240  # sent at RANK_RATE per second: a steady stream of a few seconds
RANK_RATE = 40.0
DEADLINE = 30.0  # seconds any wait-until below may take
# A warmed-up server that has had no Rank call: its no-traffic alert is pending (it fires
# after 15 minutes), and no other alert is.
IDLE_ALERTS = {"PhoenixRankerNoTraffic": "pending"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: the monitoring tests run Prometheus's `prometheus` "
            "and `promtool` (Debian/Ubuntu: apt-get install prometheus; CI installs it)",
            pytrace=False,
        )
    return path


def run(*cmd: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{output}"
    return output


def poll(probe, timeout: float = DEADLINE):
    """Call `probe` until it returns something truthy or `timeout` passes; its last answer."""
    end = time.monotonic() + timeout
    while True:
        last = probe()
        if last or time.monotonic() > end:
            return last
        time.sleep(0.2)


def wait_until(probe, what: str, timeout: float = DEADLINE):
    """Like `poll`, but fail naming `what` at the deadline."""
    last = poll(probe, timeout)
    if not last:
        pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
    return last


# -- PromQL, crudely ------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SELECTOR = re.compile(r"\b((?:phoenix|process)_[a-z0-9_]+)\s*(\{[^}]*\})?")


def metric_names(expr: str) -> set[str]:
    """phoenix_* and process_* names in a PromQL expression (string literals ignored;
    recording-rule names, which contain colons, are not metrics)."""
    return {
        name
        for name in _IDENT.findall(_STRING.sub('""', expr))
        if name.startswith(("phoenix_", "process_")) and ":" not in name
    }


def exported_names(metrics_text: str) -> dict[str, str]:
    """{sample name: metric type} from the # TYPE lines of an exposition, so that a labelled
    counter with no sample yet counts too; a histogram stands for its _bucket/_sum/_count."""
    names = {}
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "histogram":
                names.update({f"{name}{s}": kind for s in ("_bucket", "_sum", "_count")})
            else:
                names[name] = kind
    return names


# -- the dashboard ----------------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(d: dict) -> list[dict]:
    panels = []
    for p in d["panels"]:
        panels.append(p)
        panels.extend(p.get("panels", []))  # a collapsed row holds its panels
    return panels


def dashboard_exprs(d: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every annotation query."""
    exprs = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in dashboard_panels(d)
        for t in p.get("targets", [])
    ]
    exprs += [
        (f"annotation {a['name']!r}", a["expr"]) for a in d["annotations"]["list"] if "expr" in a
    ]
    return exprs


def variable_queries(d: dict) -> list[tuple[str, str, str]]:
    """(variable, series selector, label) of each `label_values(selector, label)` variable."""
    out = []
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["definition"])
            assert m, f"variable {v['name']}: not label_values(...): {v['definition']}"
            out.append((v["name"], m.group(1), m.group(2)))
    return out


def substitute(expr: str, instance: str) -> str:
    """A dashboard query as Grafana would send it with this job and instance selected."""
    out = expr.replace("$__rate_interval", "1m").replace("$instance", instance).replace("$job", JOB)
    assert "$" not in out, f"a Grafana variable the test does not know: {out}"
    return out


# -- static checks ------------------------------------------------------------------------------


def test_promtool_checks_the_rules():
    out = run(tool("promtool"), "check", "rules", str(ALERTS))
    assert "SUCCESS" in out, out


def test_promtool_checks_the_example_config(tmp_path):
    # rule_files are relative to the config's directory, whatever the working directory
    out = run(tool("promtool"), "check", "config", str(CONFIG), cwd=tmp_path)
    assert "1 rule files found" in out, out


def test_rule_unit_tests_pass_and_cover_every_alert():
    out = run(tool("promtool"), "test", "rules", ALERTS_TEST.name, cwd=PROMETHEUS_DIR)
    assert "SUCCESS" in out, out
    alerts = set(re.findall(r"^\s*- alert: (\w+)$", ALERTS.read_text(), re.M))
    tested = set(re.findall(r"^\s*alertname: (\w+)$", ALERTS_TEST.read_text(), re.M))
    assert len(alerts) >= 8 and alerts <= tested, f"alerts without a unit test: {alerts - tested}"


def test_dashboard_structure():
    d = dashboard()
    assert 36 <= d["schemaVersion"] <= 41 and d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == variables["instance"]["type"] == "query"
    panels = dashboard_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert 0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], f"panel {p['title']!r} has no query"
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", p["title"]
    used = set()
    for where, expr in dashboard_exprs(d):
        used |= metric_names(expr)
        # every selector is filtered by the dashboard's job and instance
        for name, matchers in _SELECTOR.findall(expr):
            assert matchers and '$job"' in matchers and '$instance"' in matchers, (
                f"{where}: {name} is not filtered by job and instance: {expr}"
            )
    missing = DASHBOARD_MUST_USE - used
    assert not missing, f"the dashboard charts none of {sorted(missing)}"
    assert "prefix_cache" not in DASHBOARD.read_text()  # no such metric (yet)


# -- a real Prometheus scraping a real server -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """`prometheus` on a free local port with a config and a throwaway TSDB."""

    def __init__(self, config: Path, data: Path):
        binary = tool("prometheus")
        self.log = data / "prometheus.log"
        for _attempt in range(3):  # a free port can be taken before Prometheus binds it
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with self.log.open("w") as log:
                self.proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={data / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                if wait_until(self._ready_or_exited, "Prometheus to be ready") == "ready":
                    return
            except BaseException:
                self.stop()
                raise
        pytest.fail(f"Prometheus did not start:\n{self.log.read_text()}")

    def _ready_or_exited(self) -> str | None:
        if self.proc.poll() is not None:
            return "exited"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return "ready" if response.status == 200 else None
        except OSError:
            return None

    def api(self, path: str, **params) -> dict | list:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as e:
            pytest.fail(f"Prometheus refused {path} {params}: {e.read().decode()}")
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        assert data["resultType"] == "vector", data
        return data["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value of an expression that yields one series, None if it yields none."""
        result = self.query(expr, at)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> dict[str, str]:
        """{alert name: state} of the alerts Prometheus holds (pending or firing)."""
        return {a["labels"]["alertname"]: a["state"] for a in self.api("alerts")["alerts"]}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def scrape_config(target: str) -> str:
    """The example config, scraping `target` every second with the rules at their path."""
    text = CONFIG.read_text()
    for old, new in (
        ('["phoenix-ranker:9464"]', f'["{target}"]'),
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("evaluation_interval: 15s", "evaluation_interval: 1s"),
        ("scrape_timeout: 10s", "scrape_timeout: 1s"),
        ("  - alerts.yml", f"  - {ALERTS}"),
    ):
        assert old in text, f"{CONFIG} no longer has {old!r}: update this test"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def server(compilation_cache):
    tool("prometheus")  # before the server's warm-up, not after
    with ServerProcess(*SMALL_PLAN, env=compilation_cache) as server:
        yield server


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    data = tmp_path_factory.mktemp("prometheus")
    config = data / "prometheus.yml"
    config.write_text(scrape_config(f"127.0.0.1:{server.metrics_port}"))
    prometheus = Prometheus(config, data)
    try:
        yield prometheus
    finally:
        prometheus.stop()


class Traffic:
    """What the test sent, and what the alerts looked like before it."""

    calls: int
    started: float  # wall clock, as Prometheus timestamps are
    ended: float
    slowest: float  # seconds, as the client measured it
    idle_alerts: dict[str, str]


@pytest.fixture(scope="module")
def traffic(server, prometheus) -> Traffic:
    """RANK_CALLS Rank calls at RANK_RATE per second, once Prometheus scrapes the idle server;
    returns once Prometheus has scraped all of them."""
    wait_until(lambda: prometheus.value(f'up{{job="{JOB}"}}') == 1, "up == 1")
    out = Traffic()

    def idle_alerts():  # PhoenixRankerAbsent may be pending until the first scrape is evaluated
        out.idle_alerts = prometheus.alerts()
        return out.idle_alerts == IDLE_ALERTS

    poll(idle_alerts, timeout=10)
    rng = np.random.default_rng(7)
    requests = [
        raw_request_to_pb(random_request(rng, int(rng.integers(0, 30)), int(rng.integers(1, 41))))
        for _ in range(16)
    ]
    out.slowest = 0.0
    start = time.monotonic()
    out.started = time.time()
    for i in range(RANK_CALLS):
        time.sleep(max(0.0, start + i / RANK_RATE - time.monotonic()))
        t = time.perf_counter()
        response = server.client.rank(requests[i % len(requests)], timeout=10)
        out.slowest = max(out.slowest, time.perf_counter() - t)
        assert len(response.model_version) > 0
    out.ended = time.time()
    out.calls = RANK_CALLS
    ok = f'sum(phoenix_requests_total{{job="{JOB}", method="Rank", code="OK"}})'
    wait_until(lambda: prometheus.value(ok) == RANK_CALLS, f"{ok} == {RANK_CALLS}")
    return out


@pytest.mark.slow
def test_prometheus_scrapes_the_calls_sent(server, prometheus, traffic):
    assert prometheus.value(f'up{{job="{JOB}"}}') == 1
    ok = f'phoenix_requests_total{{job="{JOB}", method="Rank", code="OK"}}'
    assert prometheus.value(f"sum({ok})") == traffic.calls  # nothing else called Rank
    assert server.metrics()["phoenix_requests_total{code=OK,method=Rank}"] == traffic.calls

    # In the middle of the stream the rate Prometheus computes is the rate it was sent at.
    sent_rate = traffic.calls / (traffic.ended - traffic.started)
    middle = (traffic.started + traffic.ended) / 2
    rate = prometheus.value(f"sum(rate({ok}[3s]))", at=middle)
    assert rate is not None and 0.6 * sent_rate < rate < 1.5 * sent_rate, (rate, sent_rate)

    p99 = prometheus.value(
        "histogram_quantile(0.99, sum by (le) (rate(phoenix_request_latency_seconds_bucket"
        f'{{job="{JOB}", method="Rank"}}[3s])))',
        at=middle,
    )
    assert p99 is not None and math.isfinite(p99) and p99 > 0, p99
    # the server's latency is within the client's: p99 lies in or below its bucket
    assert p99 <= min(b for b in LATENCY_BUCKETS if b >= traffic.slowest), (p99, traffic.slowest)


@pytest.mark.slow
def test_rules_load_and_hold_no_alert_under_traffic(prometheus, traffic):
    # Before any Rank call (see IDLE_ALERTS).
    assert traffic.idle_alerts == IDLE_ALERTS

    def evaluated():
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return groups if rules and all(r["health"] != "unknown" for r in rules) else None

    groups = wait_until(evaluated, "every rule to be evaluated")
    assert {g["name"] for g in groups} == {"phoenix-ranker", "phoenix-ranker-recording"}
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    alerts = [r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"]
    assert len(alerts) == len(re.findall(r"^\s*- alert: ", ALERTS.read_text(), re.M))

    # With Rank calls flowing, no alert is pending or firing.
    wait_until(lambda: prometheus.alerts() == {} or None, "no alert under traffic", timeout=10)
    # The recording rules see the calls.
    assert prometheus.value(f'job_code:phoenix_rank_requests:rate5m{{job="{JOB}",code="OK"}}') > 0


@pytest.mark.slow
def test_every_metric_named_exists_in_the_server(server, prometheus, traffic):
    exported = exported_names(server.metrics_text())
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    sources = [(f"rule {r['name']}", r["query"]) for r in rules]
    sources += dashboard_exprs(dashboard())
    sources += [(f"variable {v}", selector) for v, selector, _ in variable_queries(dashboard())]
    used = set()
    for where, expr in sources:
        names = metric_names(expr)
        used |= names
        unknown = names - exported.keys()
        assert not unknown, f"{where} names metrics the server does not export: {unknown}"
        if "histogram_quantile" in expr:
            assert any(exported[n] == "histogram" for n in names), f"{where}: {expr}"
    assert len(used) >= 20, sorted(used)


@pytest.mark.slow
def test_every_dashboard_query_answers(server, prometheus, traffic):
    d = dashboard()
    instance = f"127.0.0.1:{server.metrics_port}"
    for variable, selector, label in variable_queries(d):
        values = prometheus.api(f"label/{label}/values", **{"match[]": substitute(selector, "")})
        expected = JOB if label == "job" else instance
        assert expected in values, f"variable {variable}: {values}"
    for where, expr in dashboard_exprs(d):
        result = prometheus.query(substitute(expr, instance))
        # refusals (none were provoked) and reloads (none happened) have no series yet
        if "phoenix_admission_refusals_total" in expr or where.startswith("annotation"):
            continue
        assert result, f"{where} returned no series: {substitute(expr, instance)}"
