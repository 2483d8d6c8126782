"""The deployment files, checked without a cluster or a Docker engine: every kustomize overlay renders
and passes kubernetes-validate --strict (also with each autoscaling component), carries what the cluster
needs (probes, limits, GPUs, an autoscaler that fits the runners' drain), and compose.yaml (plus the CI
override) names every service with the wiring the stack depends on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
AUTOSCALERS = ("autoscale-hpa", "autoscale-keda")
K8S_VERSIONS = ("1.29.0", "1.37.0")
SERVICES = ("catalog", "downloader", "runner", "gateway")
GRPC_PORTS = {"catalog": 13370, "downloader": 13371, "runner": 13372}
KUBECTL = shutil.which("kubectl")
VALIDATE = Path(sys.executable).with_name("kubernetes-validate")

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (kustomize renders)")


def kustomize(directory: Path) -> str:
    assert KUBECTL is not None
    out = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(overlay: str) -> str:
    return kustomize(K8S / "overlays" / overlay)


def render_with(tmp_path: Path, overlay: str, component: str) -> str:
    """What an operator's overlay renders that takes `overlay` and adds `component` (kustomize wants the
    paths relative)."""
    here = Path(os.path.relpath(K8S, tmp_path))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [str(here / "overlays" / overlay)],
        "components": [str(here / "components" / component)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return kustomize(tmp_path)


def by_key(rendered: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}


def objects(overlay: str) -> dict[tuple[str, str], dict[str, Any]]:
    return by_key(render(overlay))


def validate_strictly(rendered: str, k8s_version: str) -> None:
    assert VALIDATE.exists(), f"{VALIDATE} missing: install the dev extra"
    out = subprocess.run(
        [str(VALIDATE), "--strict", "--quiet", "-k", k8s_version, "-"],
        input=rendered,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_there_are_cpu_and_gpu_overlays() -> None:
    assert {"cpu", "gpu"} <= set(OVERLAYS)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_overlay_passes_strict_validation(overlay: str, k8s_version: str) -> None:
    validate_strictly(render(overlay), k8s_version)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_runs_every_service_with_probes_and_limits(overlay: str) -> None:
    objs = objects(overlay)
    for name in SERVICES:
        kind = "StatefulSet" if name == "runner" else "Deployment"
        workload = objs[(kind, name)]
        assert ("Service", name) in objs
        c = container(workload)
        assert c["resources"]["limits"]["memory"], name
        assert c["resources"]["requests"]["cpu"], name
        if name in GRPC_PORTS:
            # Kubernetes' native gRPC probes against grpc.health.v1, which every service serves.
            assert c["readinessProbe"]["grpc"]["port"] == GRPC_PORTS[name]
            assert c["livenessProbe"]["grpc"]["port"] == GRPC_PORTS[name]
        else:
            assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
    kinds = {kind for kind, _ in objs}
    assert {"PodDisruptionBudget", "NetworkPolicy", "ConfigMap", "Secret"} <= kinds


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runners_advertise_their_pod_ip(overlay: str) -> None:
    env = {e["name"]: e for e in container(objects(overlay)[("StatefulSet", "runner")])["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["JAN_RUNNER_ADVERTISE_ADDRESS"]["value"] == "$(POD_IP):13372"
    assert env["JAN_RUNNER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    names = list(env)
    assert names.index("POD_IP") < names.index("JAN_RUNNER_ADVERTISE_ADDRESS")  # $(VAR) needs it first
    assert int(env["JAN_RUNNER_MEMORY_BUDGET_BYTES"]["value"]) > 0


@needs_kubectl
def test_gpu_overlay_puts_runners_and_triton_on_gpus() -> None:
    objs = objects("gpu")
    for key in [("StatefulSet", "runner"), ("Deployment", "triton")]:
        pod = objs[key]["spec"]["template"]["spec"]
        c = container(objs[key])
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1", key
        assert pod["nodeSelector"], key
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), key
    assert "runner-cuda" in container(objs[("StatefulSet", "runner")])["image"]
    assert "trtllm" in container(objs[("Deployment", "triton")])["image"]
    assert ("Service", "triton") in objs


@needs_kubectl
def test_cpu_overlay_asks_for_no_gpu() -> None:
    assert "nvidia.com/gpu" not in render("cpu")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_is_open_to_the_outside(overlay: str) -> None:
    policies = {name: o for (kind, name), o in objects(overlay).items() if kind == "NetworkPolicy"}
    deny = [p for p in policies.values() if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny, "no default-deny ingress policy"
    open_to_all = [
        p
        for p in policies.values()
        for rule in p["spec"].get("ingress", [])
        if "from" not in rule  # a rule without `from` admits every source
    ]
    assert [p["spec"]["podSelector"] for p in open_to_all] == [
        {"matchLabels": {"app.kubernetes.io/name": "gateway"}}
    ]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runners_expose_metrics_to_prometheus(overlay: str) -> None:
    objs = objects(overlay)
    runner = objs[("StatefulSet", "runner")]
    c = container(runner)
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["JAN_RUNNER_METRICS_PORT"] == str(port)  # 0 would turn the metrics off
    assert runner["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    scrape = objs[("NetworkPolicy", "runner-metrics-from-monitoring")]["spec"]["ingress"]
    assert [p["port"] for rule in scrape for p in rule["ports"]] == ["metrics"]


@needs_kubectl
@pytest.mark.parametrize("component", AUTOSCALERS)
@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_overlay_with_an_autoscaler_passes_strict_validation(
    tmp_path: Path, component: str, k8s_version: str
) -> None:
    # KEDA's ScaledObject is a custom resource kubernetes-validate has no schema for: the next test
    # checks its fields; everything else is validated as usual.
    docs = [d for d in yaml.safe_load_all(render_with(tmp_path, "cpu", component)) if d]
    core = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
    assert len(core) >= len(docs) - 1
    validate_strictly(yaml.safe_dump_all(core), k8s_version)


def scale_down_window(behavior: dict[str, Any]) -> int:
    return int(behavior["scaleDown"]["stabilizationWindowSeconds"])


@needs_kubectl
def test_hpa_scales_runners_by_queue_depth_slower_than_they_drain(tmp_path: Path) -> None:
    objs = by_key(render_with(tmp_path, "cpu", "autoscale-hpa"))
    runner = objs[("StatefulSet", "runner")]
    hpa = objs[("HorizontalPodAutoscaler", "runner")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["metadata"]["namespace"] == runner["metadata"]["namespace"] == "jan-models"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "runner"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    grace = runner["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert scale_down_window(hpa["spec"]["behavior"]) >= grace
    assert "replicas" not in runner["spec"]  # or every `kubectl apply` would reset what the HPA chose

    # The adapter's rule makes the HPA's metric out of the runners' per-model queue depth, per pod.
    rules = yaml.safe_load(objs[("ConfigMap", "jan-models-adapter-rules")]["data"]["config.yaml"])["rules"]
    [rule] = [r for r in rules if r["name"]["as"] == metric["pods"]["metric"]["name"]]
    assert "jan_runner_model_queue_depth" in rule["seriesQuery"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert rule["metricsQuery"].startswith("sum(")


@needs_kubectl
def test_keda_scales_runners_by_queue_depth_slower_than_they_drain(tmp_path: Path) -> None:
    objs = by_key(render_with(tmp_path, "cpu", "autoscale-keda"))
    runner = objs[("StatefulSet", "runner")]
    scaled = objs[("ScaledObject", "runner")]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["namespace"] == "jan-models"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "runner"}
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert "jan_runner_model_queue_depth" in trigger["metadata"]["query"]
    assert trigger["metadata"]["serverAddress"].startswith("http")
    assert float(trigger["metadata"]["threshold"]) > 0  # KEDA takes it as a string
    grace = runner["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert scale_down_window(spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]) >= grace
    assert "replicas" not in runner["spec"]
    assert not [key for key in objs if key[0] == "HorizontalPodAutoscaler"]  # KEDA makes its own


def load_compose(*names: str) -> dict[str, Any]:
    """compose files merged the simple way compose does for the keys used here (services by name)."""
    merged: dict[str, Any] = {"services": {}}
    for name in names:
        doc = yaml.safe_load((ROOT / name).read_text())
        for service, body in doc["services"].items():
            merged["services"].setdefault(service, {}).update(body)
        for key in ("volumes",):
            merged.setdefault(key, {}).update(doc.get(key) or {})
    return merged


def test_compose_names_every_service_and_publishes_only_the_gateway() -> None:
    compose = load_compose("compose.yaml")
    services = compose["services"]
    assert set(SERVICES) | {"minio", "minio-init", "triton"} <= set(services)
    assert "name" not in yaml.safe_load((ROOT / "compose.yaml").read_text())  # compose v1.29 refuses it
    published = sorted(name for name, s in services.items() if s.get("ports"))
    assert published == ["gateway"]
    assert services["gateway"]["ports"][0].endswith(":1337")
    assert services["minio"]["image"].startswith("minio/minio:")
    assert services["triton"]["profiles"] == ["gpu"]
    assert "trtllm-python-py3" in services["triton"]["image"]
    for name in SERVICES:
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["build"]["target"] == name
        for dep, cond in services[name].get("depends_on", {}).items():
            assert cond["condition"] in ("service_healthy", "service_completed_successfully"), (name, dep)
    assert set(services["gateway"]["depends_on"]) == {"catalog", "downloader", "runner"}


def test_compose_ci_override_replaces_minio_and_keeps_the_rest() -> None:
    ci = yaml.safe_load((ROOT / "compose.ci.yaml").read_text())["services"]
    assert "moto_server" in ci["minio"]["command"]
    assert not ci["minio"]["image"].startswith("minio/")
    merged = load_compose("compose.yaml", "compose.ci.yaml")["services"]
    assert (
        merged["gateway"]["image"]
        == yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["gateway"]["image"]
    )
    assert not [name for name, s in merged.items() if s.get("ports") and name != "gateway"]
