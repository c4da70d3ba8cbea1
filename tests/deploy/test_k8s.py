"""The Kubernetes manifests in deploy/k8s, checked offline (no cluster).

1. Every file parses (duplicate keys are errors) and opens with a comment saying what it is.
2. The core kinds validate against the Kubernetes OpenAPI schemas bundled in
   `kubernetes-validate`, in strict mode (an unknown or misspelt field fails), for the oldest
   Kubernetes the manifests target and the newest the package ships.
3. What no schema can see: the files agree with each other and with the server. Each check is
   a function of one `Bundle` (a Deployment flavour with the shared Service, HPA, PDB,
   PodMonitor and Kustomization) returning its problems; `test_check_fails_on_mutation` breaks
   a copy of the manifests once per check to prove that every check can fail.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from server.app import DRAIN_RESERVE_SECONDS
from server.flags import ENV_PREFIX, add_flags, config_from_args, options
from server.operations.metrics import Metrics
from tests.conftest import ROOT

K8S_DIR = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(K8S_DIR.glob("*.yaml"))
VARIANTS = ("deployment.yaml", "deployment-gpu.yaml")  # alternatives: one Deployment name
# The oldest Kubernetes the manifests target, and the newest the package ships.
K8S_VERSIONS = ("1.30", ".".join(kubernetes_validate.latest_version().split(".")[:2]))
SCHEMA_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
STRUCTURAL_KINDS = {"PodMonitor", "ServiceMonitor", "Kustomization"}  # CRDs, kustomize

STARTUP_BUDGET_S = 300  # cold warm-up was seen to take ~245 s in a busy container
LIVENESS_MIN_S = 30  # failing for less than this must not restart a pod
EXIT_MARGIN_S = 2  # after the drain, for the process to exit
RUN_AS_USER = 10001  # the image's user
JOB_NAME = "phoenix-ranker"  # the scrape job deploy/prometheus/alerts.yml selects
PROBES = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
LAME_DUCK_MIN_S = 3  # a balancer polling readiness every second or two notices within it
IANA_SVC_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$")
QUANTITY = re.compile(r"^(?P<num>[+-]?(\d+(\.\d*)?|\.\d+))(?P<suffix>[eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$")  # fmt: skip
SUFFIXES = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18"), "Ki": Decimal(2**10), "Mi": Decimal(2**20),
            "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50), "Ei": Decimal(2**60)}  # fmt: skip


# --- loading -------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _mapping_without_duplicates(loader, node, deep=False):
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
    if duplicates:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {duplicates}", node.start_mark
        )
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]


def load_file(path: Path) -> list[dict]:
    return load_docs(path.read_text())


@dataclasses.dataclass
class Bundle:
    """What one deployment is made of: a Deployment flavour and the shared manifests."""

    variant: str
    deployment: dict
    services: list[dict]
    hpa: dict
    pdb: dict
    monitor: dict
    kustomization: dict
    files: list[str]  # every manifest file name in deploy/k8s

    @property
    def pod(self) -> dict:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def pod_labels(self) -> dict:
        return self.deployment["spec"]["template"]["metadata"].get("labels", {})

    @property
    def container(self) -> dict:
        (container,) = self.pod["containers"]  # one container: the server
        return container

    @property
    def container_ports(self) -> dict[str, int]:
        return {p.get("name"): p["containerPort"] for p in self.container.get("ports", [])}

    @property
    def env(self) -> dict[str, str]:
        return {e["name"]: e.get("value") for e in self.container.get("env", [])}

    def settings(self) -> dict[str, Any]:
        """The server's settings as `phoenix-ranker serve` would read them from this env."""
        env = {k: v for k, v in self.env.items() if k.startswith(ENV_PREFIX)}
        parser = argparse.ArgumentParser()
        add_flags(parser, env=env)
        args = parser.parse_args([])
        config_from_args(args)  # the config's own validation
        return vars(args)


def _one(path: Path, kind: str) -> dict:
    (doc,) = [d for d in load_file(path) if d["kind"] == kind]
    return doc


def load_bundle(variant: str) -> Bundle:
    monitors = [
        d for p in MANIFESTS for d in load_file(p) if d["kind"] in ("PodMonitor", "ServiceMonitor")
    ]  # fmt: skip
    return Bundle(
        variant=variant,
        deployment=_one(K8S_DIR / variant, "Deployment"),
        services=[d for d in load_file(K8S_DIR / "service.yaml") if d["kind"] == "Service"],
        hpa=_one(K8S_DIR / "hpa.yaml", "HorizontalPodAutoscaler"),
        pdb=_one(K8S_DIR / "pdb.yaml", "PodDisruptionBudget"),
        monitor=monitors[0] if len(monitors) == 1 else {},
        kustomization=_one(K8S_DIR / "kustomization.yaml", "Kustomization"),
        files=[p.name for p in MANIFESTS],
    )


# --- helpers -------------------------------------------------------------------------------


def quantity(text: Any) -> Decimal:
    m = QUANTITY.match(str(text))
    if m is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    suffix = m["suffix"] or ""
    if suffix[:1] in ("e", "E"):
        return Decimal(m["num"]) * Decimal(10) ** int(suffix[1:])
    return Decimal(m["num"]) * SUFFIXES[suffix]


def selects(selector: dict | None, labels: dict) -> bool:
    """A non-empty matchLabels selector (no matchExpressions) that matches `labels`."""
    if not selector or selector.get("matchExpressions"):
        return False
    match = selector.get("matchLabels", selector)  # Service selectors are bare maps
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def prestop_pause_s(container: dict) -> float | None:
    """Seconds the preStop hook pauses: the `sleep` action or `exec: sleep N`."""
    hook = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook.get("exec", {}).get("command", [])
    if len(command) == 2 and command[0] in ("sleep", "/bin/sleep", "/usr/bin/sleep"):
        return float(command[1])
    return None


def server_gauges() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    return {m.name for m in registry.collect() if m.type == "gauge"}


# --- the checks ----------------------------------------------------------------------------

Check = Callable[[Bundle], list[str]]
CHECKS: dict[str, Check] = {}


def check(fn: Check) -> Check:
    CHECKS[fn.__name__] = fn
    return fn


@check
def deployment_selects_its_pods(b: Bundle) -> list[str]:
    if not selects(b.deployment["spec"].get("selector"), b.pod_labels):
        return ["the Deployment's selector does not match its pod template's labels"]
    return []


@check
def services_select_pods(b: Bundle) -> list[str]:
    problems = []
    headless = [s for s in b.services if s["spec"].get("clusterIP") == "None"]
    virtual = [s for s in b.services if s["spec"].get("clusterIP") != "None"]
    if len(headless) != 1 or len(virtual) != 1:
        problems.append("want one headless (clusterIP: None) and one ClusterIP Service")
    for s in headless:
        if s["spec"].get("publishNotReadyAddresses"):
            problems.append("the headless Service publishes pods that are not Ready")
    for s in b.services:
        if not selects(s["spec"].get("selector"), b.pod_labels):
            problems.append(f"Service {s['metadata']['name']} does not select the pods")
    return problems


@check
def service_ports_name_container_ports(b: Bundle) -> list[str]:
    problems = []
    for s in b.services:
        for port in s["spec"].get("ports", []):
            target = port.get("targetPort")
            if not isinstance(target, str) or target not in b.container_ports:
                problems.append(
                    f"Service {s['metadata']['name']} port {port.get('name')}: targetPort "
                    f"{target!r} is not a named container port ({sorted(b.container_ports)})"
                )
            elif target != "grpc":
                problems.append(f"Service {s['metadata']['name']} exposes {target}, not grpc")
    return problems


@check
def container_ports_named(b: Bundle) -> list[str]:
    problems = []
    names = [p.get("name") for p in b.container.get("ports", [])]
    for name in names:
        if not isinstance(name, str) or not IANA_SVC_NAME.match(name):
            problems.append(f"container port name {name!r} is not a valid IANA service name")
    if sorted(n for n in names if n in ("grpc", "metrics")) != ["grpc", "metrics"]:
        problems.append(f"want one container port named grpc and one named metrics: {names}")
    return problems


@check
def env_is_server_settings(b: Bundle) -> list[str]:
    known = {opt.env for opt in options()}
    problems = [
        f"{name} is not a server setting (ignored by phoenix-ranker serve)"
        for name in b.env
        if name.startswith(ENV_PREFIX) and name not in known
    ]
    try:
        b.settings()
    except (ValueError, TypeError) as e:
        problems.append(f"the server would refuse this environment: {e}")
    return problems


@check
def serving_host_from_the_downward_api(b: Bundle) -> list[str]:
    """PredictNextActions answers name the serving pod and node (POD_NAME, NODE_NAME)."""
    fields = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
              for e in b.container.get("env", [])}  # fmt: skip
    want = {"POD_NAME": "metadata.name", "NODE_NAME": "spec.nodeName"}
    return [f"{name} should come from the downward API's {path}, got {fields.get(name)}"
            for name, path in want.items() if fields.get(name) != path]  # fmt: skip


@check
def ports_match_settings(b: Bundle) -> list[str]:
    settings, ports = b.settings(), b.container_ports
    problems = []
    if ports.get("grpc") != settings["port"]:
        problems.append(f"container port grpc {ports.get('grpc')} != PHOENIX_PORT {settings['port']}")  # fmt: skip
    if ports.get("readiness") != settings["readiness_port"]:
        problems.append(
            f"container port readiness {ports.get('readiness')} != PHOENIX_READINESS_PORT "
            f"{settings['readiness_port']}"
        )
    if ports.get("metrics") != settings["metrics_port"]:
        problems.append(
            f"container port metrics {ports.get('metrics')} != PHOENIX_METRICS_PORT "
            f"{settings['metrics_port']}"
        )
    return problems


@check
def probes_read_readiness_over_http(b: Bundle) -> list[str]:
    """One readiness story: startup and readiness read /readyz, liveness /healthz, on the
    server's readiness port (what home-mixer polls), by the container port's name."""
    problems = []
    for kind, path in PROBES.items():
        probe = b.container.get(kind)
        if probe is None:
            problems.append(f"no {kind}")
        elif "httpGet" not in probe:
            problems.append(f"{kind} does not read {path} over HTTP")
        elif probe["httpGet"].get("path") != path:
            problems.append(f"{kind} reads {probe['httpGet'].get('path')}, not {path}")
        elif probe["httpGet"].get("port") != "readiness" or "readiness" not in b.container_ports:
            problems.append(f"{kind} probes port {probe['httpGet'].get('port')!r}, not the "
                            "container port named readiness")  # fmt: skip
        elif probe["httpGet"].get("scheme", "HTTP") != "HTTP":
            problems.append(f"{kind} speaks {probe['httpGet']['scheme']}: the port is plain HTTP")
    return problems


@check
def startup_probe_covers_cold_warmup(b: Bundle) -> list[str]:
    probe = b.container.get("startupProbe", {})
    budget = probe.get("initialDelaySeconds", 0) + probe.get("failureThreshold", 3) * probe.get(
        "periodSeconds", 10
    )
    if budget < STARTUP_BUDGET_S:
        return [f"startupProbe allows {budget} s, warm-up may need {STARTUP_BUDGET_S} s"]
    return []


@check
def liveness_probe_tolerant(b: Bundle) -> list[str]:
    probe = b.container.get("livenessProbe", {})
    window = probe.get("failureThreshold", 3) * probe.get("periodSeconds", 10)
    problems = []
    if window < LIVENESS_MIN_S:
        problems.append(f"livenessProbe restarts after {window} s of failures (< {LIVENESS_MIN_S})")  # fmt: skip
    if probe.get("timeoutSeconds", 1) < 2:
        problems.append("livenessProbe times out in under 2 s")
    return problems


@check
def termination_grace_covers_shutdown(b: Bundle) -> list[str]:
    """The pod is given the whole shutdown: a preStop pause if any, then the server's grace
    period (lame duck and drain), then time to exit; and the lame duck leaves time to drain."""
    settings = b.settings()
    pause = prestop_pause_s(b.container) or 0
    grace, delay = settings["grace_seconds"], settings["drain_delay_seconds"]
    total = b.pod.get("terminationGracePeriodSeconds", 30)
    problems = []
    if total < pause + grace + EXIT_MARGIN_S:
        problems.append(f"terminationGracePeriodSeconds {total} < preStop {pause} + "
                        f"PHOENIX_GRACE_SECONDS {grace} + {EXIT_MARGIN_S} s to exit")  # fmt: skip
    if delay < LAME_DUCK_MIN_S:
        problems.append(f"PHOENIX_DRAIN_DELAY_SECONDS {delay} < {LAME_DUCK_MIN_S} s: balancers "
                        "polling readiness would still be sending when calls are refused")  # fmt: skip
    if delay > grace - DRAIN_RESERVE_SECONDS:
        problems.append(f"PHOENIX_DRAIN_DELAY_SECONDS {delay} leaves less than "
                        f"{DRAIN_RESERVE_SECONDS} s of PHOENIX_GRACE_SECONDS {grace} to drain")  # fmt: skip
    return problems


@check
def metrics_bound_beyond_loopback(b: Bundle) -> list[str]:
    host = str(b.settings()["metrics_host"]).strip("[]")
    if host == "localhost":
        return ["PHOENIX_METRICS_HOST is localhost: Prometheus cannot scrape the pod"]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        return [f"PHOENIX_METRICS_HOST {host!r} is not an address"]
    return [f"PHOENIX_METRICS_HOST {host} is loopback"] if loopback else []


@check
def compilation_cache_on_volume(b: Bundle) -> list[str]:
    cache = b.settings()["compilation_cache"]
    if cache is None:
        return ["no PHOENIX_COMPILATION_CACHE: every start compiles from scratch"]
    volumes = {v["name"] for v in b.pod.get("volumes", [])}
    for mount in b.container.get("volumeMounts", []):
        if Path(mount["mountPath"]) == Path(cache):
            if mount.get("readOnly"):
                return [f"{cache} is mounted read-only"]
            if mount["name"] not in volumes:
                return [f"{cache}: no volume named {mount['name']}"]
            return []
    return [f"PHOENIX_COMPILATION_CACHE {cache} is not on a volume"]


@check
def runs_locked_down(b: Bundle) -> list[str]:
    pod_sc, sc = b.pod.get("securityContext", {}), b.container.get("securityContext", {})

    def effective(key):
        return sc.get(key, pod_sc.get(key))

    problems = []
    if effective("runAsNonRoot") is not True:
        problems.append("runAsNonRoot is not true")
    if effective("runAsUser") != RUN_AS_USER:
        problems.append(f"runAsUser is {effective('runAsUser')}, not the image's {RUN_AS_USER}")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if sc.get("privileged"):
        problems.append("privileged")
    caps = sc.get("capabilities", {})
    if "ALL" not in caps.get("drop", []) or caps.get("add"):
        problems.append("capabilities: want drop [ALL] and nothing added")
    if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("seccompProfile is not RuntimeDefault")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("the root filesystem is writable")
    elif "/tmp" not in {m["mountPath"] for m in b.container.get("volumeMounts", [])}:
        problems.append("read-only root filesystem without a writable /tmp volume")
    return problems


@check
def resources_bounded(b: Bundle) -> list[str]:
    resources = b.container.get("resources", {})
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    problems = []
    for name in ("cpu", "memory"):
        if name not in requests or name not in limits:
            problems.append(f"{name}: want both a request and a limit")
    for name, value in [*requests.items(), *limits.items()]:
        try:
            quantity(value)
        except ValueError as e:
            problems.append(f"{name}: {e}")
            return problems
    for name in requests.keys() & limits.keys():
        if quantity(requests[name]) > quantity(limits[name]):
            problems.append(f"{name}: request {requests[name]} above limit {limits[name]}")
    return problems


@check
def flavour_matches_file(b: Bundle) -> list[str]:
    gpus = b.container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    image = b.container.get("image", "")
    problems = []
    if b.variant == "deployment-gpu.yaml":
        if gpus is None or quantity(gpus) != 1:
            problems.append(f"the GPU flavour asks for nvidia.com/gpu {gpus}, not 1")
        if not image.endswith(":cuda"):
            problems.append(f"the GPU flavour runs {image}, not the :cuda image")
        if not b.pod.get("nodeSelector") and not b.pod.get("tolerations"):
            problems.append("the GPU flavour has no node selector or toleration")
    else:
        if gpus is not None:
            problems.append("the CPU flavour asks for a GPU")
        if image.endswith(":cuda"):
            problems.append("the CPU flavour runs the :cuda image")
    return problems


@check
def hpa_scales_the_deployment(b: Bundle) -> list[str]:
    spec, problems = b.hpa["spec"], []
    ref = spec.get("scaleTargetRef", {})
    wanted = {"apiVersion": "apps/v1", "kind": "Deployment", "name": b.deployment["metadata"]["name"]}  # fmt: skip
    if {k: ref.get(k) for k in wanted} != wanted:
        problems.append(f"the HPA targets {ref}, not {wanted}")
    if "replicas" in b.deployment["spec"]:
        problems.append("the Deployment sets replicas, which the HPA owns")
    if spec.get("minReplicas", 1) < 2:
        problems.append("minReplicas < 2: one pod is a single point of failure")
    if spec.get("maxReplicas", 0) < spec.get("minReplicas", 1):
        problems.append("maxReplicas < minReplicas")
    metrics = spec.get("metrics", [])
    pods = [m["pods"]["metric"]["name"] for m in metrics if m.get("type") == "Pods"]
    if not pods:
        problems.append("no Pods metric (the server's load gauges)")
    gauges = server_gauges()
    problems += [f"Pods metric {name} is not a gauge the server exports" for name in pods if name not in gauges]  # fmt: skip
    cpu = [m for m in metrics if m.get("type") == "Resource" and m["resource"]["name"] == "cpu"]
    if not cpu:
        problems.append("no CPU fallback metric")
    elif "cpu" not in b.container.get("resources", {}).get("requests", {}):
        problems.append("CPU utilisation needs a CPU request")
    return problems


@check
def pdb_selects_pods(b: Bundle) -> list[str]:
    spec, problems = b.pdb["spec"], []
    if not selects(spec.get("selector"), b.pod_labels):
        problems.append("the PodDisruptionBudget does not select the pods")
    if "maxUnavailable" not in spec and "minAvailable" not in spec:
        problems.append("the PodDisruptionBudget bounds nothing")
    min_available = spec.get("minAvailable")
    if isinstance(min_available, int) and min_available >= b.hpa["spec"].get("minReplicas", 1):
        problems.append("minAvailable >= the HPA's minReplicas: node drains would block")
    return problems


@check
def monitor_scrapes_metrics_port(b: Bundle) -> list[str]:
    m = b.monitor
    if m.get("apiVersion") != "monitoring.coreos.com/v1" or m.get("kind") not in ("PodMonitor", "ServiceMonitor"):  # fmt: skip
        return ["want exactly one monitoring.coreos.com/v1 PodMonitor or ServiceMonitor"]
    problems, job_label = [], m["spec"].get("jobLabel")
    if m["kind"] == "PodMonitor":
        if not selects(m["spec"].get("selector"), b.pod_labels):
            problems.append("the PodMonitor does not select the pods")
        endpoints, ports = m["spec"].get("podMetricsEndpoints", []), b.container_ports
        # The operator names the job after the pod label `jobLabel`, else "<namespace>/<name>".
        jobs = {b.pod_labels.get(job_label) if job_label else "<namespace>/" + m["metadata"]["name"]}  # fmt: skip
    else:  # a ServiceMonitor scrapes a named port of the Services it selects
        services = [s for s in b.services if selects(m["spec"].get("selector"), s["metadata"].get("labels", {}))]  # fmt: skip
        if not services:
            problems.append("the ServiceMonitor selects no Service")
        endpoints = m["spec"].get("endpoints", [])
        # The job is the Service's label `jobLabel`, else the Service's name.
        jobs = {s["metadata"].get("labels", {}).get(job_label) if job_label else s["metadata"]["name"] for s in services}  # fmt: skip
        ports = {
            p["name"]: b.container_ports.get(p["targetPort"])
            for s in services
            for p in s["spec"]["ports"]
        }
    if not endpoints:
        problems.append("no scrape endpoint")
    for e in endpoints:
        if e.get("port") not in ports or ports[e.get("port")] != b.settings()["metrics_port"]:
            problems.append(f"scrape port {e.get('port')!r} is not the metrics port")
        if e.get("path", "/metrics") != "/metrics":
            problems.append(f"scrape path {e.get('path')} is not /metrics")
    if jobs != {JOB_NAME}:
        problems.append(f"scrape job {sorted(map(str, jobs))}, not {JOB_NAME!r} (the alerts' job)")
    return problems


@check
def scrape_annotations_match(b: Bundle) -> list[str]:
    annotations = b.deployment["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" not in annotations:
        return []  # optional
    problems = []
    if annotations["prometheus.io/port"] != str(b.settings()["metrics_port"]):
        problems.append(f"prometheus.io/port {annotations['prometheus.io/port']} is not the metrics port")  # fmt: skip
    if annotations.get("prometheus.io/path", "/metrics") != "/metrics":
        problems.append("prometheus.io/path is not /metrics")
    return problems


@check
def kustomization_lists_manifests(b: Bundle) -> list[str]:
    listed = b.kustomization.get("resources", [])
    # deployment-gpu.yaml is the alternative to deployment.yaml: listing both is a name clash.
    wanted = sorted(set(b.files) - {"kustomization.yaml", "deployment-gpu.yaml"})
    if sorted(listed) != wanted:
        return [f"kustomization resources {sorted(listed)} != {wanted}"]
    return []


# --- tests ---------------------------------------------------------------------------------


def _docs():
    for path in MANIFESTS:
        for i, doc in enumerate(load_file(path)):
            yield pytest.param(path, doc, id=f"{path.name}:{i}:{doc.get('kind')}")


def test_the_manifests_are_there():
    names = {p.name for p in MANIFESTS}
    assert {*VARIANTS, "service.yaml", "hpa.yaml", "pdb.yaml", "kustomization.yaml"} <= names
    assert names & {"podmonitor.yaml", "servicemonitor.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_file_opens_with_a_comment_and_parses(path):
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines[0].startswith("#"), f"{path.name}: no header comment saying what it is for"
    docs = load_file(path)
    assert docs
    for doc in docs:
        assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind")
        assert doc["kind"] in SCHEMA_KINDS | STRUCTURAL_KINDS, f"no check for kind {doc['kind']}"
        if doc["kind"] != "Kustomization":
            assert doc.get("metadata", {}).get("name")


def test_duplicate_keys_are_refused():
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate keys"):
        load_docs("spec:\n  env: []\n  env: [x]\n")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("path", "doc"), [p for p in _docs() if p.values[1]["kind"] in SCHEMA_KINDS]
)
def test_core_kinds_validate_strictly(path, doc, version):
    kubernetes_validate.validate(doc, version, strict=True)


def _misspelt_field(d):
    d["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}


def _wrong_type(d):
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "20"


def _named_grpc_probe_port(d):  # gRPC probes take port numbers only
    d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {"grpc": {"port": "grpc"}}


def _no_selector(d):
    del d["spec"]["selector"]


@pytest.mark.parametrize(
    "mutate", [_misspelt_field, _wrong_type, _named_grpc_probe_port, _no_selector]
)
def test_schema_validation_can_fail(mutate):
    doc = copy.deepcopy(_one(K8S_DIR / "deployment.yaml", "Deployment"))
    mutate(doc)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


@pytest.fixture(scope="module", params=VARIANTS)
def bundle(request) -> Bundle:
    return load_bundle(request.param)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_passes(bundle, name):
    assert CHECKS[name](bundle) == []


# One mutation per check (at least), applied to a copy of each flavour's bundle: each must make
# its check report a problem, so no check passes vacuously.
def _set_env(b: Bundle, name: str, value: str | None) -> None:
    env = [e for e in b.container["env"] if e["name"] != name]
    b.container["env"] = env + ([{"name": name, "value": value}] if value is not None else [])


def _port(b: Bundle, name: str) -> dict:
    (port,) = [p for p in b.container["ports"] if p["name"] == name]
    return port


MUTATIONS: list[tuple[str, str, Callable[[Bundle], None]]] = [
    ("deployment_selects_its_pods", "selector/template mismatch",
     lambda b: b.deployment["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "x"})),
    ("services_select_pods", "Service selector typo",
     lambda b: b.services[0]["spec"]["selector"].update({"app.kubernetes.io/name": "phoenix-rankr"})),
    ("services_select_pods", "no headless Service",
     lambda b: b.services[0]["spec"].pop("clusterIP")),
    ("service_ports_name_container_ports", "targetPort names no port",
     lambda b: b.services[1]["spec"]["ports"][0].update({"targetPort": "rpc"})),
    ("service_ports_name_container_ports", "numeric targetPort",
     lambda b: b.services[0]["spec"]["ports"][0].update({"targetPort": 50051})),
    ("container_ports_named", "port renamed",
     lambda b: _port(b, "metrics").update({"name": "prometheus-metrics"})),
    ("env_is_server_settings", "misspelt setting",
     lambda b: _set_env(b, "PHOENIX_METRIC_HOST", "0.0.0.0")),
    ("env_is_server_settings", "malformed value",
     lambda b: _set_env(b, "PHOENIX_GRACE_SECONDS", "10s")),
    ("serving_host_from_the_downward_api", "no NODE_NAME",
     lambda b: b.container.update({"env": [e for e in b.container["env"] if e["name"] != "NODE_NAME"]})),
    ("serving_host_from_the_downward_api", "POD_NAME from the wrong field",
     lambda b: [e for e in b.container["env"] if e["name"] == "POD_NAME"][0]["valueFrom"]["fieldRef"].update({"fieldPath": "metadata.uid"})),
    ("ports_match_settings", "PHOENIX_PORT moved",
     lambda b: _set_env(b, "PHOENIX_PORT", "50052")),
    ("ports_match_settings", "metrics container port 9090",
     lambda b: _port(b, "metrics").update({"containerPort": 9090})),
    ("probes_read_readiness_over_http", "readiness on the metrics port",
     lambda b: b.container["readinessProbe"]["httpGet"].update({"port": "metrics"})),
    ("probes_read_readiness_over_http", "readiness from /healthz",
     lambda b: b.container["readinessProbe"]["httpGet"].update({"path": "/healthz"})),
    ("probes_read_readiness_over_http", "no liveness probe",
     lambda b: b.container.pop("livenessProbe")),
    ("probes_read_readiness_over_http", "gRPC probe beside HTTP ones",
     lambda b: b.container.update({"startupProbe": {"grpc": {"port": 50051}, "failureThreshold": 100}})),
    ("probes_read_readiness_over_http", "HTTPS on a plain port",
     lambda b: b.container["livenessProbe"]["httpGet"].update({"scheme": "HTTPS"})),
    ("ports_match_settings", "readiness port moved",
     lambda b: _set_env(b, "PHOENIX_READINESS_PORT", "9092")),
    ("startup_probe_covers_cold_warmup", "startup budget 60 s",
     lambda b: b.container["startupProbe"].update({"failureThreshold": 12, "periodSeconds": 5})),
    ("liveness_probe_tolerant", "liveness after 3 s",
     lambda b: b.container["livenessProbe"].update({"periodSeconds": 1, "failureThreshold": 3})),
    ("termination_grace_covers_shutdown", "grace 15 s raised to 30 s",
     lambda b: _set_env(b, "PHOENIX_GRACE_SECONDS", "30")),
    ("termination_grace_covers_shutdown", "terminationGracePeriodSeconds 10",
     lambda b: b.pod.update({"terminationGracePeriodSeconds": 10})),
    ("termination_grace_covers_shutdown", "a preStop pause beside the same budget",
     lambda b: b.container.update({"lifecycle": {"preStop": {"sleep": {"seconds": 5}}}})),
    ("termination_grace_covers_shutdown", "no lame duck",
     lambda b: _set_env(b, "PHOENIX_DRAIN_DELAY_SECONDS", "0")),
    ("termination_grace_covers_shutdown", "a lame duck as long as the grace period",
     lambda b: _set_env(b, "PHOENIX_DRAIN_DELAY_SECONDS", "15")),
    ("metrics_bound_beyond_loopback", "PHOENIX_METRICS_HOST unset (127.0.0.1)",
     lambda b: _set_env(b, "PHOENIX_METRICS_HOST", None)),
    ("metrics_bound_beyond_loopback", "localhost",
     lambda b: _set_env(b, "PHOENIX_METRICS_HOST", "localhost")),
    ("compilation_cache_on_volume", "cache elsewhere",
     lambda b: _set_env(b, "PHOENIX_COMPILATION_CACHE", "/home/phoenix/.cache/jax")),
    ("compilation_cache_on_volume", "cache unset",
     lambda b: _set_env(b, "PHOENIX_COMPILATION_CACHE", None)),
    ("runs_locked_down", "runs as root",
     lambda b: (b.container["securityContext"].update({"runAsUser": 0}), b.pod["securityContext"].update({"runAsNonRoot": False}))),
    ("runs_locked_down", "privilege escalation",
     lambda b: b.container["securityContext"].pop("allowPrivilegeEscalation")),
    ("runs_locked_down", "read-only root without /tmp",
     lambda b: b.container.update({"volumeMounts": [m for m in b.container["volumeMounts"] if m["mountPath"] != "/tmp"]})),
    ("resources_bounded", "no memory limit",
     lambda b: b.container["resources"]["limits"].pop("memory")),
    ("resources_bounded", "request above limit",
     lambda b: b.container["resources"]["requests"].update({"memory": "64Gi"})),
    ("resources_bounded", "malformed quantity",
     lambda b: b.container["resources"]["limits"].update({"memory": "2 GB"})),
    ("flavour_matches_file", "image of the other flavour",
     lambda b: b.container.update({"image": "phoenix-ranker:latest" if b.container["image"].endswith(":cuda") else "phoenix-ranker:cuda"})),
    ("hpa_scales_the_deployment", "HPA targets another name",
     lambda b: b.hpa["spec"]["scaleTargetRef"].update({"name": "phoenix"})),
    ("hpa_scales_the_deployment", "metric name typo",
     lambda b: b.hpa["spec"]["metrics"][0]["pods"]["metric"].update({"name": "phoenix_request_in_flight"})),
    ("hpa_scales_the_deployment", "Deployment sets replicas",
     lambda b: b.deployment["spec"].update({"replicas": 3})),
    ("pdb_selects_pods", "PDB selects other pods",
     lambda b: b.pdb["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/component": "mixer"})),
    ("pdb_selects_pods", "minAvailable = minReplicas",
     lambda b: (b.pdb["spec"].pop("maxUnavailable"), b.pdb["spec"].update({"minAvailable": 2}))),
    ("monitor_scrapes_metrics_port", "scrapes the grpc port",
     lambda b: b.monitor["spec"]["podMetricsEndpoints"][0].update({"port": "grpc"})),
    ("monitor_scrapes_metrics_port", "selects nothing",
     lambda b: b.monitor["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "x"})),
    ("monitor_scrapes_metrics_port", "wrong path",
     lambda b: b.monitor["spec"]["podMetricsEndpoints"][0].update({"path": "/"})),
    ("monitor_scrapes_metrics_port", "default job name",
     lambda b: b.monitor["spec"].pop("jobLabel")),
    ("scrape_annotations_match", "annotation port stale",
     lambda b: b.deployment["spec"]["template"]["metadata"]["annotations"].update({"prometheus.io/port": "9090"})),
    ("kustomization_lists_manifests", "pdb.yaml not listed",
     lambda b: b.kustomization["resources"].remove("pdb.yaml")),
]  # fmt: skip


def test_every_check_has_a_mutation():
    assert {name for name, _, _ in MUTATIONS} == set(CHECKS)


@pytest.mark.parametrize(
    ("name", "mutate"), [pytest.param(n, m, id=f"{n}: {why}") for n, why, m in MUTATIONS]
)
def test_check_fails_on_mutation(bundle, name, mutate):
    broken = copy.deepcopy(bundle)
    mutate(broken)
    assert CHECKS[name](broken), f"{name} did not notice"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds():
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    kinds = sorted(d["kind"] for d in load_docs(out.stdout))
    expected = sorted(
        d["kind"]
        for name in load_bundle(VARIANTS[0]).kustomization["resources"]
        for d in load_file(K8S_DIR / name)
    )
    assert kinds == expected
