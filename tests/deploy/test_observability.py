"""End to end: a real Prometheus (Debian's) scrapes a real care-server on loopback with
deploy/prometheus/prometheus.yml and its alert rules, while care-client sends
Classify/Detect/Segment traffic; then every query of the Grafana dashboard
(deploy/grafana/careserve.json) goes through Prometheus' HTTP API and must parse and
return data."""
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from conftest import BUILD, ROOT

REPOSITORY = os.path.join(BUILD, "test_repository")
SAMPLE = os.path.join(BUILD, "test_repository_reference", "images", "chelsea_451x300.png")
# Values the dashboard's variables take here. $__rate_interval: 4 scrapes of 1 s and more.
VARIABLES = {"$__rate_interval": "10s", "$job": "careserve", "$model": ".*", "$api": ".*"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not os.path.isfile(SAMPLE):
        subprocess.run([os.path.join(ROOT, "tests", "cpp", "integration", "make_test_repository.sh"), REPOSITORY],
                       check=True)
    tmp = tmp_path_factory.mktemp("observability")
    server_log = open(tmp / "server.log", "w+")
    server = subprocess.Popen([os.path.join(BUILD, "care-server"), f"--model_repository={REPOSITORY}",
                               "--host=127.0.0.1", "--port=0", "--metrics_port=0", "--http_port=0"], stderr=server_log)
    processes = [server]
    try:
        def serving():
            text = (tmp / "server.log").read_text()
            assert server.poll() is None, text
            return "msg=serving" in text and re.search(r"grpc_port=(\d+) metrics_port=(\d+) http_port=(\d+)", text)
        ports = wait_for(serving, 180, "care-server to serve")
        grpc_port, metrics_port, http_port = int(ports.group(1)), int(ports.group(2)), int(ports.group(3))

        # The project's Prometheus configuration, pointed at this server, scraping every second.
        with open(os.path.join(ROOT, "deploy", "prometheus", "prometheus.yml")) as f:
            config = yaml.safe_load(f)
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")]
        assert config["scrape_configs"][0]["job_name"] == "careserve"
        config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus_port = free_port()
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))
        processes.append(prometheus)
        url = f"http://127.0.0.1:{prometheus_port}"

        def ready():
            try:
                return urllib.request.urlopen(url + "/-/ready", timeout=2).status == 200
            except OSError:
                return False
        wait_for(ready, 60, "Prometheus to be ready")
        yield {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}", "prometheus": url}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def traffic(stack):
    """care-client calls of every kind, good and bad, until the module is done."""
    client = os.path.join(BUILD, "care-client")
    calls = [
        ["classify", "--model=care_s0_cls", f"--image={SAMPLE}"],
        ["detect", "--model=care_s0_det", f"--image={SAMPLE}", "--score_threshold=0.33"],
        ["segment", "--model=care_s0_seg", f"--image={SAMPLE}"],
        ["classify", "--model=care_s0_cls", "--image=/etc/hostname"],  # INVALID_ARGUMENT
        ["classify", "--model=care_s0_cls", f"--image={SAMPLE}", "--protocol=oip-grpc"],
        ["classify", "--model=care_s0_cls", f"--image={SAMPLE}", "--protocol=oip-http",
         f"--http_server={stack['http']}"],
    ]
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            for call in calls:
                subprocess.run([client, call[0], f"--server={stack['grpc']}", *call[1:]],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    yield
    stop.set()
    for t in threads:
        t.join()


def query(stack, expr):
    return get_json(stack["prometheus"] + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def dashboard_queries():
    with open(os.path.join(ROOT, "deploy", "grafana", "careserve.json")) as f:
        dashboard = json.load(f)
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            yield f"{panel['id']}:{panel['title']}:{target['refId']}", expr


def test_dashboard_is_importable():
    with open(os.path.join(ROOT, "deploy", "grafana", "careserve.json")) as f:
        dashboard = json.load(f)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("request rate", "error", "latency p50 / p95 / p99", "queue", "inference", "batch size",
                  "in-flight", "cpu", "memory"):
        assert topic in titles, topic


def test_every_dashboard_query_returns_data(stack, traffic):
    # Traffic for long enough that every rate window holds several scrapes.
    wait_for(lambda: query(stack, 'sum(care_requests_total{job="careserve",method="Segment"})')["data"]["result"],
             120, "Segment requests to be scraped")
    time.sleep(6)
    empty = []
    for name, expr in dashboard_queries():
        answer = query(stack, expr)
        assert answer["status"] == "success", f"{name}: {answer}"
        if not answer["data"]["result"]:
            # Retry for a while: a window may have just missed a batch.
            deadline = time.time() + 20
            while time.time() < deadline and not answer["data"]["result"]:
                time.sleep(1)
                answer = query(stack, expr)
        if not answer["data"]["result"]:
            empty.append(f"{name}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_dashboard_variables_resolve(stack, traffic):
    with open(os.path.join(ROOT, "deploy", "grafana", "careserve.json")) as f:
        dashboard = json.load(f)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        selector = m.group(1).replace("$job", VARIABLES["$job"])
        values = get_json(f"{stack['prometheus']}/api/v1/label/{m.group(2)}/values?"
                          + urllib.parse.urlencode({"match[]": selector}))["data"]
        assert values, variable["name"]
    models = get_json(f"{stack['prometheus']}/api/v1/label/model/values?match[]=care_model_info")["data"]
    assert {"care_s0_cls", "care_s0_det", "care_s0_seg"} <= set(models)


def test_requests_split_by_api(stack, traffic):
    def apis():
        result = query(stack, 'sum by (api) (care_requests_total{job="careserve",method=~"Classify|ModelInfer"})')
        return {r["metric"]["api"] for r in result["data"]["result"]}
    wait_for(lambda: {"vision", "oip_grpc", "oip_http"} <= apis(), 120, "requests of every API to be scraped")


def test_alert_rules_are_loaded_and_evaluate(stack, traffic):
    groups = get_json(stack["prometheus"] + "/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert len(rules) == 7
    for rule in rules.values():
        assert rule["health"] == "ok", rule
    # The test repository's models have random weights: that alert is on its way.
    def random_weights_alert():
        alerts = get_json(stack["prometheus"] + "/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "CareServeRandomWeights"
                and a["labels"]["model"] == "care_s0_cls"]
    alert = wait_for(random_weights_alert, 30, "the random-weights alert")[0]
    assert alert["state"] in ("pending", "firing")
    # And its broken models (corrupt model.pt, missing labels, invalid config) that one.
    def not_served_alerts():
        alerts = get_json(stack["prometheus"] + "/api/v1/alerts")["data"]["alerts"]
        return {a["labels"]["model"] for a in alerts if a["labels"]["alertname"] == "CareServeModelNotServed"}
    assert wait_for(lambda: not_served_alerts() >= {"broken_model", "corrupt_weights", "missing_labels"} and
                    not_served_alerts(), 30, "the model-not-served alerts") == {
        "broken_model", "corrupt_weights", "missing_labels"}
