"""deploy/prometheus and deploy/grafana against real programs: promtool checks the rules and
the example config and runs the rules' unit tests (every alert on calls has a case fed xAI's
PredictNextActions calls only); every alert links its runbook section in docs/monitoring.md;
no rule or dashboard query selects one scoring method's calls only; a real Prometheus,
configured from the example config, scrapes a real server while Rank and PredictNextActions
calls are sent, loads the rules and answers every dashboard query; every metric the rules and
the dashboard name is one the server exports.

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
import yaml

from server.contracts.convert import raw_request_to_pb
from server.operations.metrics import LATENCY_BUCKETS, METHODS
from tests.conftest import ROOT
from tests.helpers import random_request
from tests.server import xai_forms
from tests.server.conftest import SMALL_PLAN
from tests.server.harness import ServerProcess

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "phoenix-ranker.json"
RUNBOOKS = ROOT / "docs" / "monitoring.md"
JOB = "phoenix-ranker"
# The scoring RPCs, served on one port: ours, and xAI's (what xAI's home-mixer calls).
SCORING = ("Rank", "PredictNextActions")
# Series with a `method` label: what a rule or a query about calls selects.
CALL_SERIES = {
    "phoenix_requests_total", "phoenix_client_requests_total",
    "phoenix_request_latency_seconds_bucket", "phoenix_request_latency_seconds_sum",
    "phoenix_request_latency_seconds_count",
}  # fmt: skip

# The dashboard must chart these (the _bucket/_sum/_count of a histogram count as it).
DASHBOARD_MUST_USE = {
    "phoenix_requests_total", "phoenix_request_latency_seconds_bucket",
    "phoenix_requests_in_flight", "phoenix_queue_depth", "phoenix_queue_wait_seconds_bucket",
    "phoenix_queue_work_seconds", "phoenix_batch_size_sum", "phoenix_batch_rows_sum",
    "phoenix_batch_padding_ratio_sum", "phoenix_inference_seconds_bucket",
    "phoenix_candidates_scored_total", "phoenix_compilations_total", "phoenix_model_info",
    "phoenix_reloads_total", "phoenix_reload_failures_total", "phoenix_models_resident",
    "process_cpu_seconds_total", "process_resident_memory_bytes",
    "phoenix_client_requests_total", "phoenix_admission_refusals_total",
    "phoenix_queue_work_limit_seconds", "phoenix_device_calls_total",
    "phoenix_batches_unwanted_total", "phoenix_serving_withdrawn",
    "phoenix_non_finite_batches_total", "phoenix_withdrawals_total",
}  # fmt: skip

RANK_CALLS = 240  # sent at RANK_RATE per second: a steady stream of a few seconds
RANK_RATE = 40.0
PREDICT_EVERY = 3  # and a PredictNextActions call after every third Rank call,
CLIENT = "home-mixer"  # named so (x-client-name); the Rank calls carry no name
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


_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def method_matchers(expr: str) -> list[tuple[str, str, str]]:
    """(series, operator, value) of each `method` matcher on a series with a method label."""
    out = []
    for name, braces in _SELECTOR.findall(expr):
        if name in CALL_SERIES:
            out += [(name, op, value) for label, op, value in _MATCHER.findall(braces)
                    if label == "method"]  # fmt: skip
    return out


def matches(op: str, value: str, method: str) -> bool:
    """Whether the matcher `method<op>"value"` selects `method` (PromQL anchors regexes)."""
    value = value.encode().decode("unicode_escape")
    return {
        "=": method == value,
        "!=": method != value,
        "=~": re.fullmatch(value, method) is not None,
        "!~": re.fullmatch(value, method) is None,
    }[op]


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


def unsampled_names(metrics_text: str) -> set[str]:
    """Exported names with no sample yet (a labelled counter before its first count)."""
    sampled = {line.split("{")[0].split()[0] for line in metrics_text.splitlines()
               if line and not line.startswith("#")}  # fmt: skip
    return set(exported_names(metrics_text)) - sampled


# -- the rules ------------------------------------------------------------------------------


def rule_groups() -> list[dict]:
    return yaml.safe_load(ALERTS.read_text())["groups"]


def alert_rules() -> list[dict]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def unit_tests() -> list[dict]:
    return yaml.safe_load(ALERTS_TEST.read_text())["tests"]


def anchors(markdown: str) -> list[str]:
    """GitHub's anchors of a document's headings: lower case, punctuation dropped, spaces
    to hyphens (a repeated heading's -1, -2 suffixes are not made: none is expected)."""
    out = []
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*$", line)
        if m:
            text = re.sub(r"[`*_\[\]()]", "", m.group(1)).strip().lower()
            out.append(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def runbook_sections(markdown: str) -> dict[str, str]:
    """{heading: body} of the `### ` sections under `## Runbooks` (none without it)."""
    part = markdown.partition("\n## Runbooks\n")[2].split("\n## ", 1)[0]
    sections = re.split(r"^### (.+)$", part, flags=re.M)
    return dict(zip(sections[1::2], sections[2::2], strict=True))


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
    alerts = {r["alert"] for r in alert_rules()}
    assert len(alerts) == len(alert_rules()), "two alerts share a name"
    fired = {c["alertname"] for case in unit_tests() for c in case.get("alert_rule_test", [])
             if c.get("exp_alerts")}  # fmt: skip
    assert len(alerts) >= 8 and alerts <= fired, f"alerts never seen firing: {alerts - fired}"


def test_every_alert_on_calls_fires_on_predict_next_actions_alone():
    """xAI's home-mixer may be a fleet's only caller: each alert on calls (a rule that selects
    a series with a method label) has a unit test fed PredictNextActions calls and no Rank
    call, in which it fires."""
    assert set(SCORING) <= set(METHODS)
    on_calls = {r["alert"] for r in alert_rules() if metric_names(r["expr"]) & CALL_SERIES}
    assert {"PhoenixRankerHighErrorRatio", "PhoenixRankerOverloaded",
            "PhoenixRankerHighLatencyP99", "PhoenixRankerNoTraffic"} <= on_calls  # fmt: skip
    fired_on_xai = set()
    for case in unit_tests():
        series = " ".join(s["series"] for s in case["input_series"])
        if 'method="PredictNextActions"' in series and 'method="Rank"' not in series:
            fired_on_xai |= {c["alertname"] for c in case.get("alert_rule_test", [])
                             if c.get("exp_alerts")}  # fmt: skip
    missing = on_calls - fired_on_xai
    assert not missing, f"no unit test fires these on PredictNextActions calls alone: {missing}"


def test_every_alert_links_its_runbook_section():
    text = RUNBOOKS.read_text()
    found = anchors(text)
    sections = runbook_sections(text)
    table = set(re.findall(r"^\| `(PhoenixRanker\w+)` \|", text, re.M))
    for rule in alert_rules():
        name = rule["alert"]
        url = rule.get("annotations", {}).get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/monitoring.md" and anchor == name.lower(), f"{name}: {url!r}"
        assert found.count(anchor) == 1, f"{name}: no (or no single) heading #{anchor}"
        body = sections.get(name, "")
        for part in ("**Means:**", "**Check", "**Do:**"):
            assert part in body, f"{name}'s runbook section has no {part}"
    names = {r["alert"] for r in alert_rules()}
    assert set(sections) == names, f"runbooks for no alert: {set(sections) - names}"
    assert table == names, f"the alerts table differs from the rules: {table ^ names}"
    # The sections' own links to each other land too.
    for target in re.findall(r"\]\(#([\w-]+)\)", text):
        assert target in found, f"docs/monitoring.md links to #{target}, which is no heading"


def test_no_query_selects_one_scoring_method_only():
    """Traffic and errors are both scoring RPCs': a selector of calls that matches Rank also
    matches PredictNextActions (method=~"Rank|PredictNextActions", or no method matcher)."""
    sources = [(f"rule {r.get('alert') or r.get('record')}", r["expr"])
               for g in rule_groups() for r in g["rules"]]  # fmt: skip
    sources += dashboard_exprs(dashboard())
    seen = 0
    for where, expr in sources:
        for series, op, value in method_matchers(expr):
            seen += 1
            selects = {m: matches(op, value, m) for m in SCORING}
            assert len(set(selects.values())) == 1, (
                f'{where}: {series}{{method{op}"{value}"}} selects {selects}: {expr}'
            )
    assert seen >= 10, seen  # the matchers are being found


def test_method_matchers_are_read_as_promql_reads_them():
    assert method_matchers('sum(rate(phoenix_requests_total{method="Rank", code="OK"}[5m]))') == [
        ("phoenix_requests_total", "=", "Rank")
    ]
    assert not matches("=", "Rank", "PredictNextActions")
    assert matches("=~", "Rank|PredictNextActions", "PredictNextActions")
    assert not matches("=~", "Rank|Predict", "PredictNextActions")  # anchored
    assert matches("!=", "GetModelInfo", "Rank")


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

    calls: int  # Rank calls
    predicts: int  # PredictNextActions calls, named CLIENT
    started: float  # wall clock, as Prometheus timestamps are
    ended: float
    slowest: float  # seconds, as the client measured it
    idle_alerts: dict[str, str]


@pytest.fixture(scope="module")
def traffic(server, prometheus) -> Traffic:
    """RANK_CALLS Rank calls at RANK_RATE per second, and a PredictNextActions call named
    CLIENT after every PREDICT_EVERY-th, once Prometheus scrapes the idle server; returns once
    Prometheus has scraped all of them."""
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
    predicts = [
        xai_forms.request([xai_forms.expressible(random_request(rng, 12, 8), False)],
                          "orderedAggregatedUserActionsList")
        for _ in range(4)
    ]  # fmt: skip
    out.slowest = 0.0
    out.predicts = 0
    start = time.monotonic()
    out.started = time.time()
    for i in range(RANK_CALLS):
        time.sleep(max(0.0, start + i / RANK_RATE - time.monotonic()))
        t = time.perf_counter()
        response = server.client.rank(requests[i % len(requests)], timeout=10)
        out.slowest = max(out.slowest, time.perf_counter() - t)
        assert len(response.model_version) > 0
        if i % PREDICT_EVERY == 0:
            answer = server.client.predict(predicts[out.predicts % len(predicts)], timeout=10,
                                           metadata=(("x-client-name", CLIENT),))  # fmt: skip
            assert len(answer.distributionSets) == 1
            out.predicts += 1
    out.ended = time.time()
    out.calls = RANK_CALLS
    for method, calls in (("Rank", out.calls), ("PredictNextActions", out.predicts)):
        ok = f'sum(phoenix_requests_total{{job="{JOB}", method="{method}", code="OK"}})'
        wait_until(lambda ok=ok, calls=calls: prometheus.value(ok) == calls, f"{ok} == {calls}")
    return out


@pytest.mark.slow
def test_prometheus_scrapes_the_calls_sent(server, prometheus, traffic):
    assert prometheus.value(f'up{{job="{JOB}"}}') == 1
    ok = f'phoenix_requests_total{{job="{JOB}", method="Rank", code="OK"}}'
    assert prometheus.value(f"sum({ok})") == traffic.calls  # nothing else called Rank
    samples = server.metrics()
    assert samples["phoenix_requests_total{code=OK,method=Rank}"] == traffic.calls
    assert samples["phoenix_requests_total{code=OK,method=PredictNextActions}"] == traffic.predicts
    # Each caller as it named itself: xAI's calls by their x-client-name, ours by none.
    by_client = {
        (s["metric"]["method"], s["metric"]["client"]): float(s["value"][1])
        for s in prometheus.query(
            f'sum by (method, client) (phoenix_client_requests_total{{job="{JOB}"}})'
        )
    }
    assert by_client == {
        ("Rank", "unknown"): traffic.calls,
        ("PredictNextActions", CLIENT): traffic.predicts,
    }

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
    # The recording rules see the calls of both scoring methods, and who sent them.
    for method in SCORING:
        rate = f'job_method_code:phoenix_scoring_requests:rate5m{{job="{JOB}",method="{method}",code="OK"}}'
        assert prometheus.value(rate) > 0, rate
    assert prometheus.value(f'job_client:phoenix_scoring_requests:rate5m{{client="{CLIENT}"}}') > 0


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
    # Labelled counters with no sample yet: refusals and withdrawals (none were provoked).
    unsampled = unsampled_names(server.metrics_text())
    assert {"phoenix_admission_refusals_total", "phoenix_withdrawals_total"} <= unsampled
    for where, expr in dashboard_exprs(d):
        result = prometheus.query(substitute(expr, instance))
        # annotations mark events (reloads, withdrawals) that did not happen
        if metric_names(expr) & unsampled or where.startswith("annotation"):
            continue
        assert result, f"{where} returned no series: {substitute(expr, instance)}"
        # a query by method answers for both scoring methods
        methods = {s["metric"]["method"] for s in result if "method" in s["metric"]}
        if methods and method_matchers(expr):
            assert set(SCORING) <= methods, f"{where}: only {methods}: {expr}"
