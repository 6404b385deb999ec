"""The Cloud Run service and the ECS task definition, checked offline: ECS against botocore's
service model and moto's ECS (in process, no network), Cloud Run's Knative Service by its
shape and its container against Kubernetes' Container schema (Knative embeds a PodSpec).
Both environments must be settings `gateway serve` starts with, and both must stop the
gateway later than its drain ends."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from gateway.settings import build_settings
from tests.conftest import ROOT

CLOUDRUN = ROOT / "deploy/cloudrun/service.yaml"
ECS = ROOT / "deploy/ecs"
# Cloud Run sends SIGTERM, then SIGKILL 10 s later; this is not configurable.
CLOUDRUN_SIGKILL_AFTER_S = 10


def _settings(env: dict[str, str]) -> Any:
    gateway_env = {k: v for k, v in env.items() if k.startswith("GATEWAY_")}
    assert gateway_env, "no GATEWAY_* settings"
    # raises SettingsError, naming the setting, on a value the server would refuse
    return build_settings({"repo": "/models"}, gateway_env)


def _load_cloudrun() -> dict[str, Any]:
    doc = yaml.safe_load(CLOUDRUN.read_text())
    assert isinstance(doc, dict)
    return doc


def test_cloudrun_service_is_a_knative_service():
    doc = _load_cloudrun()
    assert doc["apiVersion"] == "serving.knative.dev/v1"
    assert doc["kind"] == "Service"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    assert doc["metadata"]["name"] == "onnx-gateway"
    template = doc["spec"]["template"]
    assert set(doc["spec"]) <= {"template", "traffic"}
    # Knative's RevisionSpec: a PodSpec subset plus these two
    spec = template["spec"]
    assert set(spec) <= {
        "containers",
        "containerConcurrency",
        "timeoutSeconds",
        "serviceAccountName",
        "volumes",
        "nodeSelector",
    }
    assert isinstance(spec["containerConcurrency"], int) and 1 <= spec["containerConcurrency"] <= 1000
    assert isinstance(spec["timeoutSeconds"], int) and 1 <= spec["timeoutSeconds"] <= 3600
    annotations = template["metadata"]["annotations"]
    assert all(isinstance(v, str) for v in annotations.values()), "annotation values are strings"
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1
    assert sum(t["percent"] for t in doc["spec"]["traffic"]) == 100
    (container,) = spec["containers"]
    # Cloud Run routes to exactly one port, named for its protocol
    (port,) = container["ports"]
    assert port["name"] in {"http1", "h2c"}


def test_cloudrun_container_validates_against_the_kubernetes_schema():
    from kubernetes_validate.utils import validate

    spec = _load_cloudrun()["spec"]["template"]["spec"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "onnx-gateway"},
        "spec": {"containers": spec["containers"]},
    }
    validate(pod, "1.37", strict=True)  # raises on an unknown field or a wrong type


def test_cloudrun_probes_resources_and_drain_match_the_gateway():
    spec = _load_cloudrun()["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    port = container["ports"][0]["containerPort"]
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    settings = _settings({e["name"]: e["value"] for e in container["env"]})
    assert settings.drain_seconds < CLOUDRUN_SIGKILL_AFTER_S
    # the gateway answers a slow request with its own 504 before Cloud Run cuts it off
    assert settings.timeout_ms / 1000 < spec["timeoutSeconds"]
    # Cloud Run scales out before the gateway's admission control sheds with 503
    assert spec["containerConcurrency"] <= settings.max_concurrency
    # Cloud Run routes to containerPort: the port the image's gateway listens on
    image_port = re.search(r"GATEWAY_PORT=(\d+)", (ROOT / "Dockerfile.cpu").read_text())
    assert image_port is not None and port == int(image_port.group(1))


def _ecs(name: str) -> dict[str, Any]:
    data = json.loads((ECS / name).read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize(
    ("service", "operation", "document"),
    [
        ("ecs", "RegisterTaskDefinition", "task-definition.json"),
        ("ecs", "CreateService", "service.json"),
        ("elbv2", "CreateTargetGroup", "target-group.json"),
    ],
)
def test_ecs_documents_match_botocore_service_model(service, operation, document):
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model(service)
    shape = model.operation_model(operation).input_shape
    report = ParamValidator().validate(_ecs(document), shape)
    assert not report.has_errors(), report.generate_report()


def test_ecs_task_definition_registers_with_moto(monkeypatch):
    import boto3
    from moto import mock_aws

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        ecs = boto3.client("ecs", region_name="us-east-1")
        registered = ecs.register_task_definition(**_ecs("task-definition.json"))["taskDefinition"]
        described = ecs.describe_task_definition(taskDefinition="onnx-gateway")["taskDefinition"]
    assert registered["taskDefinitionArn"] == described["taskDefinitionArn"]
    (container,) = described["containerDefinitions"]
    assert container["healthCheck"]["command"][0] == "CMD"
    assert "/healthz" in container["healthCheck"]["command"][-1]
    assert described["cpu"] == "2048" and described["memory"] == "4096"


def test_ecs_health_checks_and_stop_timeout_match_the_gateway():
    task = _ecs("task-definition.json")
    (container,) = task["containerDefinitions"]
    settings = _settings({e["name"]: e["value"] for e in container["environment"]})
    # SIGKILL comes stopTimeout seconds after SIGTERM: after the drain, with room to exit
    assert container["stopTimeout"] > settings.drain_seconds + 5
    assert container["stopTimeout"] <= 120  # Fargate's maximum
    ports = {p["containerPort"] for p in container["portMappings"]}
    assert {settings.port, settings.grpc_port} == ports
    mount = container["mountPoints"][0]
    assert container["readonlyRootFilesystem"] and mount["containerPath"] == "/tmp"
    assert container["user"].split(":")[0] not in ("root", "0")
    # Fargate's valid size pairs for 2 vCPU: 4 to 16 GiB
    assert int(task["cpu"]) == 2048 and 4096 <= int(task["memory"]) <= 16384
    service = _ecs("service.json")
    (balancer,) = service["loadBalancers"]
    assert balancer["containerPort"] == settings.port
    # a rollout never drops below the desired count, and a failed one rolls itself back
    assert service["deploymentConfiguration"]["minimumHealthyPercent"] == 100
    assert service["deploymentConfiguration"]["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
    target_group = _ecs("target-group.json")
    # the load balancer routes by readiness: a draining or loading task gets no traffic
    assert target_group["HealthCheckPath"] == "/readyz"
    assert target_group["Port"] == settings.port
