"""The Prometheus configuration and alert rules pass promtool, and the alerts behave as
their unit tests say (promtool test rules)."""
import os
import subprocess

import yaml

from conftest import ROOT

PROMETHEUS = os.path.join(ROOT, "deploy", "prometheus")


def promtool(*args):
    run = subprocess.run(["promtool", *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_config_is_valid():
    out = promtool("check", "config", os.path.join(PROMETHEUS, "prometheus.yml"))
    assert "1 rule files found" in out


def test_rules_are_valid():
    assert "7 rules found" in promtool("check", "rules", os.path.join(PROMETHEUS, "alerts.yml"))


def test_alert_unit_tests():
    promtool("test", "rules", os.path.join(ROOT, "tests", "deploy", "alerts_test.yml"))


def test_kubernetes_discovery_example():
    # Debian's Prometheus is built without kubernetes_sd, so promtool cannot check this
    # file here; check its shape against deploy/k8s instead.
    with open(os.path.join(PROMETHEUS, "prometheus-kubernetes.yml")) as f:
        config = yaml.safe_load(f)
    job = config["scrape_configs"][0]
    assert job["job_name"] == "careserve"
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    keep = {tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] == "careserve"
    assert keep[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)] == "true"
    with open(os.path.join(ROOT, "deploy", "k8s", "base", "deployment.yaml")) as f:
        annotations = yaml.safe_load(f)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9091"
    assert config["rule_files"] == ["alerts.yml"]
