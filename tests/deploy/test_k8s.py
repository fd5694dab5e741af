"""Every kustomize overlay renders (kubectl kustomize), and the rendered objects are
what a cluster operator relies on: gRPC probes on the gRPC port, resources, a locked-down
security context, a drain that fits the grace period, selectors that match."""
import glob
import os
import re
import subprocess

import pytest
import yaml

from conftest import BUILD, ROOT

K8S = os.path.join(ROOT, "deploy", "k8s")
OVERLAYS = sorted(os.path.basename(d) for d in glob.glob(os.path.join(K8S, "overlays", "*")))
# Overlays of the base Deployment (kserve instead hands KServe a runtime: its own test).
DEPLOYMENT_OVERLAYS = [o for o in OVERLAYS if o != "kserve"]


def render(path):
    out = subprocess.run(["kubectl", "kustomize", path], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind):
    found = by_kind(objects, kind)
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def flags(objects):
    config = one(objects, "ConfigMap")
    return dict(re.match(r"--([a-z_]+)=(.*)", line).groups()
                for line in config["data"]["server.flags"].splitlines() if line.strip())


def test_overlays_exist():
    assert {"dev", "production", "prometheus-operator", "kserve"} <= set(OVERLAYS)


@pytest.mark.parametrize("target", ["base"] + [f"overlays/{o}" for o in DEPLOYMENT_OVERLAYS])
def test_rendered_objects(target):
    objects = render(os.path.join(K8S, target))
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    container = one([dict(c, kind="Container") for c in pod["spec"]["containers"]], "Container")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    server_flags = flags(objects)
    assert ports["grpc"] == int(server_flags["port"])
    assert ports["metrics"] == int(server_flags["metrics_port"])
    assert ports["http"] == int(server_flags["http_port"])

    # Native gRPC probes on the gRPC port: liveness on the always-SERVING "liveness"
    # service, readiness on "" (NOT_SERVING until warm and while draining), and a startup
    # probe long enough for model loading and warm-up.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    assert container["livenessProbe"]["grpc"]["service"] == "liveness"
    assert container["startupProbe"]["grpc"]["service"] == "liveness"
    assert container["readinessProbe"]["grpc"]["service"] == ""
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120

    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    # care-server sizes its threads from the container's CPU quota (cgroup) itself: the flags
    # hard-code no per-core numbers that would have to change with the limit, and the limit
    # is whole CPUs (a fraction is rounded down: the rest would go unused).
    cpus = float(str(container["resources"]["limits"]["cpu"]).rstrip("m")) / (
        1000 if str(container["resources"]["limits"]["cpu"]).endswith("m") else 1)
    assert cpus >= 1 and cpus == int(cpus), cpus
    for flag in ("engine_runners", "intra_op_threads", "lone_batch_threads", "preprocess_threads"):
        assert flag not in server_flags, flag

    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    pod_security = pod["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0

    # preStop, then SIGTERM and the server's drain, all inside the grace period.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = server_flags["drain_timeout"]
    assert drain.endswith("s") and drain[:-1].isdigit(), drain
    assert pod["spec"]["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + int(drain[:-1])

    # Volumes: the flags ConfigMap (name with kustomize's hash) and a writable /tmp.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["flags"]["configMap"]["name"] == one(objects, "ConfigMap")["metadata"]["name"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/tmp"] == "tmp" and "emptyDir" in volumes["tmp"]
    assert container["args"] == ["--flagfile=/etc/careserve/server.flags"] and mounts["/etc/careserve"] == "flags"

    services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}
    grpc_service, metrics_service = services["careserve"], services["careserve-metrics"]
    assert grpc_service["spec"]["clusterIP"] == "None", "headless: clients balance per request"
    for service in (grpc_service, metrics_service):
        assert matches(service["spec"]["selector"], pod_labels)
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports

    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    # The HPA scales on CPU: idle spinning after lone batches would count as load.
    assert int(server_flags["lone_batch_spin_us"]) == 0
    pdb = one(objects, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "the PDB must let a node drain"


def test_production_serves_models_from_a_read_only_volume():
    objects = render(os.path.join(K8S, "overlays", "production"))
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    claim = one(objects, "PersistentVolumeClaim")["metadata"]["name"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim
    mount = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "models"][0]
    assert mount["mountPath"] == flags(objects)["model_repository"] and mount["readOnly"] is True


def test_prometheus_operator_objects():
    objects = render(os.path.join(K8S, "overlays", "prometheus-operator"))
    monitor = one(objects, "ServiceMonitor")
    metrics_service = [s for s in by_kind(objects, "Service") if s["metadata"]["name"] == "careserve-metrics"][0]
    assert matches(monitor["spec"]["selector"]["matchLabels"], metrics_service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in metrics_service["spec"]["ports"]}
    # job="careserve" as the alerts and the dashboard expect.
    assert metrics_service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "careserve"

    with open(os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")) as f:
        alerts = yaml.safe_load(f)
    assert one(objects, "PrometheusRule")["spec"]["groups"] == alerts["groups"], \
        "prometheusrule.yaml is stale: run /usr/bin/python3 scripts/make_prometheusrule.py"

    hpa = one(objects, "HorizontalPodAutoscaler")
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods_metrics == ["care_queue_depth"]

    with open(os.path.join(K8S, "overlays", "prometheus-operator", "podmonitor.yaml")) as f:
        pod_monitor = yaml.safe_load(f)
    pod = one(objects, "Deployment")["spec"]["template"]
    assert matches(pod_monitor["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}


def test_configmap_flags_are_care_server_flags():
    """care-server accepts the ConfigMap's flag file: it gets past flag parsing and stops
    at the (absent) model repository."""
    flagfile = os.path.join(K8S, "base", "server.flags")
    run = subprocess.run([os.path.join(BUILD, "care-server"), f"--flagfile={flagfile}",
                          "--model_repository=/nonexistent/repository", "--port=0", "--metrics_port=-1", "--http_port=-1"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "is not a directory" in run.stderr, run.stderr


def test_kserve_runtime_and_inference_service():
    objects = render(os.path.join(K8S, "overlays", "kserve"))
    runtime = one(objects, "ServingRuntime")
    service = one(objects, "InferenceService")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    spec = runtime["spec"]
    assert {"name": "careserve", "version": "1", "autoSelect": True} in spec["supportedModelFormats"]
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    container = spec["containers"][0]
    assert container["name"] == "kserve-container"
    args = dict(re.match(r"--([a-z_]+)=(.*)", a).groups() for a in container["args"])
    assert args["model_repository"] == "/mnt/models"  # where KServe's storage initializer puts the model
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http1": int(args["http_port"]), "h2c": int(args["port"])}
    assert spec["annotations"]["prometheus.kserve.io/port"] == args["metrics_port"]
    for probe, path in [("startupProbe", "/v2/health/live"), ("livenessProbe", "/v2/health/live"),
                        ("readinessProbe", "/v2/health/ready")]:
        assert container[probe]["httpGet"] == {"path": path, "port": ports["http1"]}, probe
    assert container["resources"]["limits"]["cpu"] == container["resources"]["requests"]["cpu"]
    assert container["securityContext"]["runAsNonRoot"] is True
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "careserve" and model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2"
    # The drain fits the grace period.
    drain = int(args["drain_timeout"].rstrip("s"))
    assert drain < service["spec"]["predictor"]["terminationGracePeriodSeconds"]
    # care-server takes the runtime's flags: it gets past flag parsing and stops at the
    # (absent) model repository.
    run = subprocess.run([os.path.join(BUILD, "care-server"), *container["args"], "--model_repository=/nonexistent",
                          "--port=0", "--metrics_port=-1", "--http_port=-1"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "is not a directory" in run.stderr, run.stderr
