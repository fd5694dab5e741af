"""Writes deploy/grafana/careserve.json, the Grafana dashboard of careserve (importable:
Dashboards > Import; the Prometheus datasource is a variable).

    /usr/bin/python3 scripts/make_dashboard.py

Every panel query is evaluated against a real Prometheus scraping a real care-server in
tests/deploy/test_observability.py.
"""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "deploy", "grafana", "careserve.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job="$job", model=~"$model"'
# Request series also by the API they came by (vision, oip_grpc, oip_http).
RSEL = SEL + ', api=~"$api"'
JOB = 'job="$job"'
RI = "$__rate_interval"
SERVER_ERRORS = 'code=~"INTERNAL|UNKNOWN|UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED|DATA_LOSS"'


def target(expr, legend, ref, **extra):
    return dict({"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}, **extra)


def panel(pid, title, targets, x, y, w=12, h=8, unit="short", kind="timeseries", description="", **extra):
    p = {"id": pid, "type": kind, "title": title, "description": description, "datasource": DS,
         "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}
    p.update(extra)
    return p


def quantiles(metric, by, sel=SEL):
    return [target(f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{sel}}}[{RI}])))",
                   f"p{int(q * 100)} " + " ".join("{{%s}}" % label for label in by.split(", ")), chr(ord("A") + i))
            for i, q in enumerate((0.5, 0.95, 0.99))]


def dashboard():
    panels = [
        panel(1, "Ready replicas", [target(f"sum(care_server_ready{{{JOB}}})", "ready", "A")], 0, 0, w=6, h=4,
              kind="stat", description="Servers reporting SERVING (every model warm, not draining)."),
        panel(2, "Requests/s", [target(f"sum(rate(care_requests_total{{{RSEL}}}[{RI}]))", "requests/s", "A")],
              6, 0, w=6, h=4, kind="stat", unit="reqps"),
        panel(3, "Server error ratio",
              [target(f"sum(rate(care_requests_total{{{SEL}, {SERVER_ERRORS}}}[{RI}])) or vector(0)", "errors", "A")],
              12, 0, w=6, h=4, kind="stat", unit="percentunit"),
        panel(4, "Models served", [target(f"care_model_info{{{SEL}}}", "", "A", instant=True, format="table")],
              18, 0, w=6, h=4, kind="table",
              description="One row per model version; weights=random means its answers mean nothing."),
        panel(5, "Request rate by API, method, model, code",
              [target(f"sum by (api, method, model, code) (rate(care_requests_total{{{RSEL}}}[{RI}]))",
                      "{{api}} {{method}} {{model}} {{code}}", "A")], 0, 4, unit="reqps",
              description="api: vision (care.vision.v1), oip_grpc or oip_http (the Open Inference Protocol)."),
        panel(6, "Error rate by API, method, model, code (non-OK)",
              [target(f'sum by (api, method, model, code) (rate(care_requests_total{{{RSEL}, code!="OK"}}[{RI}]))',
                      "{{api}} {{method}} {{model}} {{code}}", "A")], 12, 4, unit="reqps",
              description="Client errors (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION) included."),
        panel(7, "Request latency p50 / p95 / p99",
              quantiles("care_request_duration_seconds", "api, method, model", RSEL), 0, 12, unit="s"),
        panel(8, "Where the time goes (p95): queue, preprocessing, inference per batch, postprocessing",
              [target(f"histogram_quantile(0.95, sum by (le, model) (rate({m}_bucket{{{SEL}}}[{RI}])))",
                      f"{name} {{{{model}}}}", chr(ord('A') + i))
               for i, (m, name) in enumerate([("care_queue_duration_seconds", "queue"),
                                              ("care_preprocess_duration_seconds", "preprocess"),
                                              ("care_inference_duration_seconds", "inference"),
                                              ("care_postprocess_duration_seconds", "postprocess")])],
              12, 12, unit="s"),
        panel(9, "Batch size distribution",
              [target(f"sum by (le) (increase(care_batch_size_bucket{{{SEL}}}[{RI}]))", "{{le}}", "A",
                      format="heatmap")], 0, 20, kind="heatmap",
              description="Requests per batch run; all mass at 1 means the batcher never finds company."),
        panel(10, "Mean batch size",
              [target(f"sum by (model) (rate(care_batch_size_sum{{{SEL}}}[{RI}])) / "
                      f"sum by (model) (rate(care_batch_size_count{{{SEL}}}[{RI}]))", "{{model}}", "A")],
              12, 20),
        panel(11, "Queue depth (and capacity)",
              [target(f"sum by (instance, model) (care_queue_depth{{{SEL}}})", "{{instance}} {{model}}", "A"),
               target(f"max by (model) (care_queue_capacity{{{SEL}}})", "capacity {{model}}", "B")], 0, 28),
        panel(12, "In-flight requests", [target(f"sum by (instance, model) (care_inflight_requests{{{SEL}}})",
                                                "{{instance}} {{model}}", "A")], 12, 28),
        panel(13, "CPU (cores)", [target(f"rate(process_cpu_seconds_total{{{JOB}}}[{RI}])", "{{instance}}", "A")],
              0, 36, unit="short"),
        panel(14, "Resident memory", [target(f"process_resident_memory_bytes{{{JOB}}}", "{{instance}}", "A")],
              12, 36, unit="bytes"),
    ]
    # The error-ratio stat: server-side errors over all requests.
    panels[2]["targets"][0]["expr"] = (
        f"(sum(rate(care_requests_total{{{RSEL}, {SERVER_ERRORS}}}[{RI}])) or vector(0)) / "
        f"sum(rate(care_requests_total{{{RSEL}}}[{RI}]))")
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "title": "careserve",
        "uid": "careserve",
        "description": "care-server: traffic, errors, latency breakdown, batching, queues, resources.",
        "tags": ["careserve", "inference", "grpc"],
        "timezone": "browser",
        "schemaVersion": 37,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            {"name": "job", "label": "Job", "type": "query", "datasource": DS,
             "query": {"query": "label_values(care_model_info, job)", "refId": "job"},
             "definition": "label_values(care_model_info, job)", "refresh": 2, "current": {}, "hide": 0},
            {"name": "model", "label": "Model", "type": "query", "datasource": DS,
             "query": {"query": 'label_values(care_model_info{job="$job"}, model)', "refId": "model"},
             "definition": 'label_values(care_model_info{job="$job"}, model)', "refresh": 2,
             "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "hide": 0},
            {"name": "api", "label": "API", "type": "query", "datasource": DS,
             "query": {"query": 'label_values(care_requests_total{job="$job"}, api)', "refId": "api"},
             "definition": 'label_values(care_requests_total{job="$job"}, api)', "refresh": 2,
             "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "hide": 0},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def main():
    os.makedirs(os.path.dirname(TARGET), exist_ok=True)
    with open(TARGET, "w") as f:
        json.dump(dashboard(), f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
