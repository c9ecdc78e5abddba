"""Static checks of deploy/: the Dockerfile (hadolint), every manifest as kustomize renders it (Kubernetes
1.30+ schemas, policy scan), and the invariants the deployment's security rests on.

The linters come from ``make deploy-tools`` (their own virtualenv, requirements-deploy.txt) and
``kubectl`` from the machine; a missing tool skips its test with the command that installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
TOOLS = REPO / "build" / "deploy-venv" / "bin"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
ENTRYPOINT_IN_IMAGE = "/opt/camserve/deploy/entrypoint.sh"
RENDERINGS = ("base", "overlays/gpu")


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.skip(f"{name} is not installed: run 'make deploy-tools'")
    return str(path)


def kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl is not installed")
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``kubectl kustomize`` of the base and the gpu overlay, one file each."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for name in RENDERINGS:
        text = subprocess.run([kubectl(), "kustomize", str(DEPLOY / "k8s" / name)], capture_output=True,
                              text=True, check=True).stdout
        files[name] = out / f"{name.replace('/', '-')}.yaml"
        files[name].write_text(text)
    return files


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kind(documents: list[dict], name: str) -> dict:
    (found,) = [d for d in documents if d["kind"] == name]
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([tool("hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_manifest_validates_against_the_kubernetes_schemas(rendered: dict[str, Path],
                                                                           version: str) -> None:
    for name, path in rendered.items():
        result = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", version, str(path)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        passed = re.findall(r"passed for resource (\S+) against version", result.stdout)
        assert len(passed) == len(docs(path)) == 7, (name, result.stdout)


def test_yaml_files_pass_yamllint() -> None:
    config = ("{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
              "comments: {min-spaces-from-content: 1}}}")
    files = sorted(str(p) for p in DEPLOY.rglob("*.yaml"))
    result = subprocess.run([tool("yamllint"), "-s", "-d", config, *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.integration  # a full policy scan: about 5 s of CPU
def test_policy_scan_has_no_failed_check_and_every_skip_is_justified(rendered: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    scan = tmp_path / "scan"
    scan.mkdir()
    for path in [*rendered.values(), DEPLOY / "k8s" / "kserve" / "inferenceservice.yaml", DEPLOY / "Dockerfile"]:
        shutil.copy(path, scan / path.name)
    result = subprocess.run([tool("checkov"), "-d", str(scan), "--framework", "kubernetes", "dockerfile",
                             "--skip-download", "--compact", "--output", "json"],
                            capture_output=True, text=True, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}
    for report in reports:
        assert report["summary"]["failed"] == 0, [
            (c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
        assert report["summary"]["parsing_errors"] == 0
        assert report["summary"]["passed"] > 50
        for check in report["results"]["skipped_checks"]:
            assert len(check["check_result"].get("suppress_comment", "")) > 40, check["check_id"]


def containers(pod_spec: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod_spec["containers"]}


def test_only_the_proxy_port_is_served_and_nothing_leaves_the_pods(rendered: dict[str, Path]) -> None:
    for path in rendered.values():
        manifests = docs(path)
        pod = kind(manifests, "Deployment")["spec"]["template"]["spec"]
        proxy, torchserve = containers(pod)["proxy"], containers(pod)["torchserve"]
        assert "ports" not in torchserve  # TorchServe listens on the pod's loopback
        assert {p["name"]: p["containerPort"] for p in proxy["ports"]} == {"http": 8000, "health": 8086,
                                                                          "metrics": 9082}
        service = kind(manifests, "Service")["spec"]
        assert service["type"] == "ClusterIP"
        assert [p["targetPort"] for p in service["ports"]] == ["http"]
        policy = kind(manifests, "NetworkPolicy")["spec"]
        assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["egress"] == []
        rules = {tuple(p["port"] for p in rule["ports"]): rule["from"] for rule in policy["ingress"]}
        assert set(rules) == {(8000,), (9082,)}
        assert rules[(9082,)] == [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}]


def test_pods_run_non_root_on_a_read_only_root_filesystem(rendered: dict[str, Path]) -> None:
    kserve = docs(DEPLOY / "k8s" / "kserve" / "inferenceservice.yaml")[0]["spec"]["predictor"]
    pod_specs = [kind(docs(p), "Deployment")["spec"]["template"]["spec"] for p in rendered.values()] + [kserve]
    for pod in pod_specs:
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]
        mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert {"/tmp", "/run/camserve", "/etc/camserve/token"} <= mounts


def test_the_manifests_run_the_image_entrypoint_without_repeating_it(rendered: dict[str, Path]) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f'ENTRYPOINT ["{ENTRYPOINT_IN_IMAGE}"]' in dockerfile
    assert "COPY deploy/entrypoint.sh deploy/entrypoint.sh" in dockerfile and "WORKDIR /opt/camserve" in dockerfile
    kserve = docs(DEPLOY / "k8s" / "kserve" / "inferenceservice.yaml")[0]["spec"]["predictor"]
    for pod in [kind(docs(p), "Deployment")["spec"]["template"]["spec"] for p in rendered.values()] + [kserve]:
        for container in pod["containers"]:
            assert "command" not in container and container["args"] in (["serve"], ["proxy"])
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                command = container.get(probe, {}).get("exec", {}).get("command")
                assert command is None or command[:2] == [ENTRYPOINT_IN_IMAGE, "health"]


def test_probes_follow_torchserve_readiness(rendered: dict[str, Path]) -> None:
    pod = kind(docs(rendered["base"]), "Deployment")["spec"]["template"]["spec"]
    torchserve, proxy = containers(pod)["torchserve"], containers(pod)["proxy"]
    health = [ENTRYPOINT_IN_IMAGE, "health"]
    assert torchserve["startupProbe"]["exec"]["command"] == health
    assert torchserve["readinessProbe"]["exec"]["command"] == health
    assert torchserve["livenessProbe"]["exec"]["command"] == [*health, "--live"]
    startup = torchserve["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model load
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/ping", "port": "health"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_gpu_overlay_asks_for_a_gpu_and_scales_on_queue_latency(rendered: dict[str, Path]) -> None:
    gpu, base = docs(rendered["overlays/gpu"]), docs(rendered["base"])
    pod = kind(gpu, "Deployment")["spec"]["template"]["spec"]
    resources = containers(pod)["torchserve"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert containers(pod)["torchserve"]["image"].endswith(":0.1.0-cuda")
    assert "nvidia.com/gpu" not in str(kind(base, "Deployment"))
    for manifests in (gpu, base):
        hpa = kind(manifests, "HorizontalPodAutoscaler")
        assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["minReplicas"] >= 2
        assert kind(manifests, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    metrics = kind(gpu, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["ContainerResource", "Pods"]
    assert metrics[1]["pods"]["metric"]["name"] == "camserve_queue_latency_ms"


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_deployed_torchserve_config_keeps_token_auth_and_loopback() -> None:
    config = properties((DEPLOY / "torchserve" / "config.properties").read_text())
    for key in ("inference_address", "management_address", "metrics_address"):
        assert config[key].startswith("http://127.0.0.1:")
    assert config["grpc_inference_address"] == config["grpc_management_address"] == "127.0.0.1"
    assert config["disable_token_authorization"] == "false" and config["enable_model_api"] == "false"
    assert config["metrics_mode"] == "prometheus" and config["enable_envvars_config"] == "false"
    assert config["install_py_dep_per_model"] == "false"


def test_entrypoint_renders_only_ports_and_paths() -> None:
    shipped = properties((DEPLOY / "torchserve" / "config.properties").read_text())
    env = {**os.environ, "CAMSERVE_INFERENCE_PORT": "18080", "CAMSERVE_METRICS_PORT": "18082",
           "CAMSERVE_MODEL_STORE": "/models"}
    rendered = properties(subprocess.run([str(DEPLOY / "entrypoint.sh"), "config"], env=env, check=True,
                                         capture_output=True, text=True).stdout)
    changed = {k: v for k, v in rendered.items() if shipped[k] != v}
    assert changed == {"inference_address": "http://127.0.0.1:18080", "metrics_address": "http://127.0.0.1:18082",
                       "model_store": "/models",
                       "metrics_config": str(DEPLOY / "torchserve" / "metrics.yaml")}
    bad = subprocess.run([str(DEPLOY / "entrypoint.sh"), "config"], capture_output=True, text=True,
                         env={**os.environ, "CAMSERVE_INFERENCE_PORT": "80; rm -rf /"})
    assert bad.returncode == 64 and "port number" in bad.stderr


@pytest.mark.parametrize("token", ["short", "a" * 40 + '"; return 200; #', "a" * 40 + " $http_host", ""])
def test_proxy_refuses_a_token_that_could_weaken_or_inject_its_config(tmp_path: Path, token: str) -> None:
    (tmp_path / "token").write_text(token)
    env = {**os.environ, "CAMSERVE_TOKEN_FILE": str(tmp_path / "token"), "CAMSERVE_PROXY_DIR": str(tmp_path / "px"),
           "CAMSERVE_RUN_DIR": str(tmp_path / "run")}
    result = subprocess.run([str(DEPLOY / "entrypoint.sh"), "proxy"], env=env, capture_output=True, text=True,
                            timeout=10)
    assert result.returncode == 64 and "token" in result.stderr
    assert not (tmp_path / "px" / "client-auth.conf").exists()


def test_handler_metrics_are_declared_with_model_name_and_level_last() -> None:
    metrics = yaml.safe_load((DEPLOY / "torchserve" / "metrics.yaml").read_text())
    declared = {m["name"]: (kind_, m["dimensions"]) for kind_, ms in metrics["model_metrics"].items() for m in ms}
    assert declared["CamserveRequestLatencyMs"] == ("histogram", ["ModelName", "Level"])
    assert declared["CamserveBatchSize"] == ("histogram", ["ModelName", "Level"])
    assert declared["CamserveRejectedRequests"] == ("counter", ["Code", "ModelName", "Level"])
    frontend = {m["name"] for ms in metrics["ts_metrics"].values() for m in ms}
    assert {"ts_queue_latency_microseconds", "ts_inference_latency_microseconds"} <= frontend


def test_image_pins_match_the_tested_versions() -> None:
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    for line in (REPO / "requirements.txt").read_text().splitlines():
        spec = line.split("#")[0].strip()
        if spec and not spec.startswith("-"):
            req = Requirement(spec)
            assert req.name.lower() in pins and req.specifier.contains(pins[req.name.lower()]), spec
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={pins['torch']}" in dockerfile
    assert f"ARG TORCHVISION_VERSION={pins['torchvision']}" in dockerfile
    assert re.findall(r"^FROM (\S+:\S+) AS base$", dockerfile, re.M) == ["python:3.11.13-slim-bookworm"]


def test_app_refuses_to_start_without_the_token_file(tmp_path: Path) -> None:
    env = {**os.environ, "CAMSERVE_TOKEN_FILE": str(tmp_path / "absent")}
    result = subprocess.run([str(DEPLOY / "entrypoint.sh"), "app"], env=env, capture_output=True, text=True)
    assert result.returncode == 64 and "token file" in result.stderr
