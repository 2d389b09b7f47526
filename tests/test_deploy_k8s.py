"""The Kubernetes manifests (deploy/k8s/): no cluster here, so they are parsed and their wiring
checked — names, labels, ports, probes, the drain and its grace period, the worker's config and
command through the real CLI and config loader, HAProxy's config through `haproxy -c`."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from realtime.cli import _parser
from realtime.config import Config
from tests.cluster_util import need_haproxy
from tests.realtime_util import REPO

K8S = REPO / "deploy" / "k8s"


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], path
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"{key} defined twice"
            out[key] = doc
    return out


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def port(c: dict, name: str) -> int:
    return next(p["containerPort"] for p in c["ports"] if p["name"] == name)


def selects(service: dict, deployment: dict) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"] and \
        all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


@pytest.fixture(scope="module")
def worker_config(objects) -> Config:
    text = objects["ConfigMap", "step-realtime-worker-config"]["data"]["worker.yaml"]
    return Config.model_validate(yaml.safe_load(text))


def test_the_worker_runs_its_config_with_probes_and_a_drain(objects, worker_config):
    deployment = objects["Deployment", "step-realtime-worker"]
    c = container(deployment)
    args = _parser().parse_args(c["args"])  # the real CLI's parser
    assert args.command == "serve" and not args.workers  # one server per pod; Kubernetes replicates
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert Path(args.config).parent == Path(mount["mountPath"])
    assert Path(args.config).name in objects["ConfigMap", "step-realtime-worker-config"]["data"]
    server = worker_config.server
    assert port(c, "http") == server.port and port(c, "agent") == server.agent_port and server.host == "0.0.0.0"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    assert f":{server.port}/admin/drain" in pre_stop and "Authorization" in pre_stop  # /admin/ needs a key
    assert server.auth.enabled  # keys from the Secret in the environment
    keys = next(e for e in c["env"] if e["name"] == server.auth.api_keys_env)
    assert keys["valueFrom"]["secretKeyRef"]["name"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= server.drain_grace_s + 10  # the process drains, then exits, before it is killed
    assert server.drain_grace_s >= 300  # "as long as a call"


def test_the_workers_service_exposes_both_ports(objects):
    service, deployment = objects["Service", "step-realtime-workers"], objects["Deployment", "step-realtime-worker"]
    assert selects(service, deployment) and service["spec"]["clusterIP"] == "None"
    c = container(deployment)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": port(c, "http"),
                                                                       "agent": port(c, "agent")}
    pdb = objects["PodDisruptionBudget", "step-realtime-worker"]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_haproxy_finds_the_workers_and_asks_their_agents(objects, worker_config, tmp_path):
    cfg = objects["ConfigMap", "step-realtime-haproxy"]["data"]["haproxy.cfg"]
    template = next(line.split() for line in cfg.splitlines() if line.strip().startswith("server-template"))
    assert template[3].startswith("_http._tcp.step-realtime-workers.")  # the headless Service's named port
    assert template[template.index("agent-port") + 1] == str(worker_config.server.agent_port)
    assert "balance leastconn" in cfg and "agent-check" in template
    # the same rules as the one-box entry (deploy/haproxy/haproxy.cfg.tmpl)
    local = (REPO / "deploy" / "haproxy" / "haproxy.cfg.tmpl").read_text()
    for rule in ("retry-on conn-failure empty-response 503 404", "stick match path,field(5,/)",
                 "http-request deny deny_status 403 if { path_beg /admin/ }", "timeout tunnel 2h"):
        assert rule in cfg and rule in local
    deployment, service = objects["Deployment", "step-realtime-haproxy"], objects["Service", "step-realtime"]
    c = container(deployment)
    assert any(line.strip() == f"bind :{port(c, 'http')}" for line in cfg.splitlines())
    assert selects(service, deployment) and service["spec"]["ports"][0]["targetPort"] == "http"
    assert c["args"][-1] == f"{c['volumeMounts'][0]['mountPath']}/haproxy.cfg"
    need_haproxy()
    path = tmp_path / "haproxy.cfg"
    path.write_text(cfg)
    result = subprocess.run([shutil.which("haproxy") or "/usr/sbin/haproxy", "-c", "-f", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_the_worker_reaches_the_model_tier(objects, worker_config):
    rayservice = objects["RayService", "step-realtime-models"]
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    for stage in (worker_config.tokenizer, worker_config.decoder):  # KubeRay's head Service, GCS port
        assert stage.options()["address"] == f"{rayservice['metadata']['name']}-head-svc:{port(head, 'gcs')}"
    apps = {a["name"] for a in yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]}
    assert {worker_config.tokenizer.options()["app"], worker_config.decoder.options()["app"]} <= apps
    vllm, service = objects["Deployment", "vllm-step-audio-chat"], objects["Service", "vllm-step-audio-chat"]
    c = container(vllm)
    flags = dict(a[2:].split("=", 1) for a in c["args"] if a.startswith("--") and "=" in a)
    assert int(flags["tensor-parallel-size"]) == c["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert selects(service, vllm) and service["spec"]["ports"][0]["port"] == int(flags["port"]) == port(c, "http")
    from core.config import validate_options
    from llm.step_audio import Options as LLMOptions

    llm = worker_config.llm.options()
    validate_options(LLMOptions, "llm", llm)  # every option is a real one of the worker's LLM stage
    assert llm["base_url"] == f"http://{service['metadata']['name']}:{flags['port']}/v1"
    assert llm["model"] == flags["served-model-name"]
