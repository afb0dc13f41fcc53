"""deploy/kubernetes/, tested the way the Dockerfile is (no cluster here): the YAML parsed and checked against what
the service really uses (the Dockerfile's command and port, the settings it reads, the routes it has, its drain
and gunicorn's graceful stop), then the service started with the Deployment's own command and environment and its
probes run against it, as the kubelet would. The training Job's shell command is run too, with a stand-in for
Python, to check the TF_CONFIG it builds for each worker.

    .venv/bin/python -m pytest -q tests/test_deploy_kubernetes.py
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import ROOT
from test_container import dockerfile_stages
from tiny_model import TINY_FORMAT

from serve.settings import PREFIX, Settings
from serve.testing import GunicornServer

yaml = pytest.importorskip("yaml")

KUBERNETES = ROOT / "deploy" / "kubernetes"


def manifests() -> dict[str, dict]:
    """Every object in deploy/kubernetes/*.yaml, by "Kind/name"."""
    found = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


@pytest.fixture(scope="module")
def objects() -> dict[str, dict]:
    return manifests()


@pytest.fixture(scope="module")
def deployment(objects) -> dict:
    return objects["Deployment/pocketcnn"]


@pytest.fixture(scope="module")
def container(deployment) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def environment(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def graceful_timeout() -> float:
    """gunicorn's graceful_timeout as serve/gunicorn_conf.py sets it (read, not imported: importing it configures
    the process for gunicorn)."""
    tree = ast.parse((ROOT / "serve" / "gunicorn_conf.py").read_text())
    (value,) = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
                and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["graceful_timeout"]]
    return float(value)


def test_the_deployment_runs_the_images_command_on_the_images_port(container):
    runtime = dict(dockerfile_stages())["runtime"]
    (cmd,) = [json.loads(arguments) for instruction, arguments in runtime if instruction == "CMD"]
    (exposed,) = [int(arguments) for instruction, arguments in runtime if instruction == "EXPOSE"]
    assert container["command"] == cmd
    tests_server = GunicornServer()
    tests_server.stop()
    assert tests_server.command[1:] == cmd[1:], "the tests' gunicorn runs the same command"
    (port,) = container["ports"]
    assert port["containerPort"] == exposed
    bind = environment(container)["POCKETCNN_BIND"]
    assert bind == f"0.0.0.0:{exposed}", "listening on the pod's address"  # noqa: S104


def test_every_variable_is_a_setting_the_service_reads_with_a_value_it_accepts(container):
    env = environment(container)
    names = {PREFIX + name.upper() for name in Settings.__dataclass_fields__}
    assert {name for name in env if name.startswith(PREFIX)} <= names, "unknown POCKETCNN_ variables"
    assert set(env) - names == {"PROMETHEUS_MULTIPROC_DIR"}
    settings = Settings.from_env(environ=env)  # raises on a value the service refuses
    assert settings.model_repository == "/models" and settings.drain_seconds > 0
    cpu = float(container["resources"]["limits"]["cpu"])
    assert settings.worker_count == cpu, "one gunicorn worker per CPU the pod may use"
    assert container["resources"]["requests"]["cpu"], "the autoscaler measures use against the request"


def test_probes_are_the_services_routes_on_the_service_port(container):
    from serve import create_app

    routes = {rule.rule for rule in create_app({"POLL_SECONDS": 0, "LOAD_IN_BACKGROUND": False,
                                                "MODEL_REPOSITORY": "/nonexistent"}).url_map.iter_rules()}
    (port,) = container["ports"]
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (readiness["path"], liveness["path"]) == ("/readyz", "/healthz")
    assert {readiness["path"], liveness["path"]} <= routes
    assert readiness["port"] == liveness["port"] == port["name"]


def test_the_pod_is_locked_down_and_outlives_its_drain(deployment, container):
    pod = deployment["spec"]["template"]["spec"]
    runtime = dict(dockerfile_stages())["runtime"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (user,) = [arguments for instruction, arguments in runtime if instruction == "USER"]
    assert user != "root" and pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "a writable /tmp on a read-only root"
    env = environment(container)
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/"), "the metrics are written where the pod can write"
    models = mounts[env["POCKETCNN_MODEL_REPOSITORY"]]
    assert models["readOnly"] is True and volumes[models["name"]]["persistentVolumeClaim"]["readOnly"] is True
    drain = float(env["POCKETCNN_DRAIN_SECONDS"])
    probe = container["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] < drain, "out of the endpoints before the drain ends"
    assert pod["terminationGracePeriodSeconds"] > drain + graceful_timeout()
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_the_service_and_the_autoscaler_point_at_the_deployment(objects, deployment, container):
    service, autoscaler = objects["Service/pocketcnn"], objects["HorizontalPodAutoscaler/pocketcnn"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == container["ports"][0]["name"]
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    low, high = autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]
    assert 2 <= low < high


def probe(url: str, spec: dict) -> int:
    """What the kubelet's httpGet probe sees: the status, or 0 for no answer within the probe's timeout."""
    try:
        with urllib.request.urlopen(url + spec["httpGet"]["path"], timeout=spec["timeoutSeconds"]) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


@pytest.mark.slow
def test_the_probes_against_a_real_instance_started_as_the_deployment_says(container, tiny_repository, tmp_path):
    """The Deployment's environment (the bind address on loopback, /models at a local copy, /tmp at a temporary
    folder), its command: the readiness probe is 503 while no model is there and the liveness probe 200 (an empty
    repository is not a reason to restart the pod); 200 and 200 once a version is published; 503 at once on
    SIGTERM (draining), while the liveness probe stays 200."""
    env = environment(container)
    models = tmp_path / "models"
    models.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env.update(POCKETCNN_MODEL_REPOSITORY=str(models), POCKETCNN_MODEL_FORMAT=TINY_FORMAT,
               POCKETCNN_POLL_SECONDS="0.5",
               PROMETHEUS_MULTIPROC_DIR=env["PROMETHEUS_MULTIPROC_DIR"].replace("/tmp", str(tmp), 1))
    server = GunicornServer(env=env, log_path=tmp_path / "gunicorn.log")
    env["POCKETCNN_BIND"] = env["POCKETCNN_BIND"].replace("0.0.0.0:8000", f"127.0.0.1:{server.port}")
    server.env.update(env)
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    server.start(wait="/healthz")
    try:
        assert server.worker_pids() and len(server.worker_pids()) == int(env["POCKETCNN_WORKERS"])
        assert (probe(server.url, readiness), probe(server.url, liveness)) == (503, 200)
        shutil.copytree(tiny_repository / "fashion_mnist", models / "fashion_mnist")
        deadline = time.monotonic() + 30
        while probe(server.url, readiness) != 200:
            assert time.monotonic() < deadline, "not ready 30 s after a version was published"
            time.sleep(0.2)
        assert probe(server.url, liveness) == 200
        os.kill(server.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + readiness["periodSeconds"] * readiness["failureThreshold"]
        while probe(server.url, readiness) != 503:
            assert time.monotonic() < deadline, "/readyz still 200 a probe period after SIGTERM"
            time.sleep(0.05)
        assert probe(server.url, liveness) == 200, "draining is not dying: the kubelet must not restart it"
    finally:
        server.stop(signal.SIGINT)


def test_the_training_job_gives_each_worker_its_tf_config_and_resumes_an_unfinished_run(objects, tmp_path):
    job = objects["Job/pocketcnn-train"]
    service = objects["Service/pocketcnn-train"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    (container,) = pod["containers"]
    shell, flag, script = container["command"]
    assert (shell, flag) == ("sh", "-c")
    # A stand-in for Python that prints what the worker would start with.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text('#!/bin/sh\nprintf \'%s\\n\' "$TF_CONFIG" "$*"\n')
    (bin_dir / "python").chmod(0o755)
    runs = tmp_path / "runs"
    script = script.replace("/runs", str(runs))

    def start(index: int) -> tuple[dict, str]:
        result = subprocess.run(["sh", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin",
                                                             "JOB_COMPLETION_INDEX": str(index)},
                                capture_output=True, text=True, check=True)
        tf_config, arguments = result.stdout.splitlines()
        return json.loads(tf_config), arguments

    (port,) = service["spec"]["ports"]
    for index in (0, 1):
        config, arguments = start(index)
        assert config["task"] == {"type": "worker", "index": index}
        assert config["cluster"]["worker"] == [f"pocketcnn-train-{i}.pocketcnn-train:{port['port']}" for i in (0, 1)]
        assert arguments.startswith("-m train --strategy multi-worker")
    run = Path(arguments.split("--run-name ")[1].split()[0])
    (runs / run).mkdir(parents=True)
    (runs / run / "config.json").write_text("{}")  # an unfinished run (the chief wrote its config)
    assert start(1)[1] == f"-m train --resume {runs / run}"
