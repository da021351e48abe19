"""The deployment files keep their promises: secrets, ports, start order, GPUs and shared paths.

No Docker engine or cluster runs here, so the files are read as data; `.ci/validate-deploy`
checks them against the Compose and Kubernetes schemas.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.waiting import serve_on_a_free_port

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML through the tomli backport
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
SECRET = {"name": "lrstudy-postgres", "key": "password"}
# `${VAR}` or `${VAR:?message}`: resolved from the environment, with no default to fall back on.
REQUIRED_REFERENCE = re.compile(r"\$\{[A-Z_][A-Z0-9_]*(:?\?[^}]*)?\}")
SECRET_NAME = re.compile(r"pass(word)?|secret|token", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"[a-z+]+://[^/@\s:]+:([^/@\s]+)@")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in deploy/k8s, found {len(found)}"
    return found[0]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted path, scalar) in a parsed YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")
    else:
        yield path, node


def _set_value(command: list[str], key: str) -> str:
    """The value of ``--set key=VALUE`` in a command, TOML quotes removed."""
    for flag, arg in itertools.pairwise(command):
        if flag == "--set" and arg.startswith(f"{key}="):
            return arg.partition("=")[2].strip('"')
    raise AssertionError(f"no --set {key}=... in {command}")


def _option(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A compose service's mounts by target; the long syntax keeps ``read_only`` explicit."""
    mounts = {}
    for mount in service.get("volumes", []):
        assert isinstance(mount, dict), f"use the long mount syntax, not {mount!r}"
        mounts[mount["target"]] = mount
    return mounts


# --- docker-compose.yml ---------------------------------------------------------------------


def test_compose_has_the_four_services() -> None:
    assert set(_services()) == {"postgres", "create", "worker", "dashboard"}


def test_postgres_is_pinned_persistent_and_health_checked_over_tcp() -> None:
    postgres = _services()["postgres"]
    assert re.fullmatch(r"postgres:1[5-9](\.\d+)?(-\w+)?", postgres["image"])
    data = _mounts(postgres)["/var/lib/postgresql/data"]
    assert data["type"] == "volume"
    assert data["source"] in _compose()["volumes"]
    test = postgres["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "pg_isready"
    # The socket answers during first-start initialisation, before TCP clients can connect.
    assert _option(test, "-h") == "127.0.0.1"
    assert "ports" not in postgres


def test_start_order_waits_for_health_and_for_create() -> None:
    services = _services()
    for name in ("create", "worker", "dashboard"):
        assert services[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["worker"]["depends_on"]["create"] == {
        "condition": "service_completed_successfully"
    }
    assert services["create"]["restart"] == "no"


def test_password_comes_only_from_a_required_variable() -> None:
    services = _services()
    assert REQUIRED_REFERENCE.fullmatch(services["postgres"]["environment"]["POSTGRES_PASSWORD"])
    for name in ("create", "worker", "dashboard"):
        assert REQUIRED_REFERENCE.fullmatch(services[name]["environment"]["PGPASSWORD"])
    for path, value in _walk(_compose()):
        if SECRET_NAME.search(path.rsplit(".", 1)[-1]) and value is not None:
            assert REQUIRED_REFERENCE.fullmatch(str(value)), f"{path} is a literal: {value!r}"
        if isinstance(value, str):
            match = URL_WITH_PASSWORD.search(value)
            assert match is None, f"{path} carries a password in a URL: {value!r}"


def test_env_example_leaves_the_password_empty_and_lists_every_required_variable() -> None:
    settings = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert settings["POSTGRES_PASSWORD"] == ""
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    assert used <= set(settings), f"not in .env.example: {sorted(used - set(settings))}"
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored


def test_published_ports_bind_loopback_only() -> None:
    published = 0
    for name, service in _services().items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
    assert published == 1


def test_workers_reserve_nvidia_gpus_and_pin_them_per_process() -> None:
    worker = _services()["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    assert "count" in devices[0] or "device_ids" in devices[0]
    # Docker gives `count: N` as GPUs 0..N-1 to every replica; `launch` pins one per process.
    assert worker["command"][0] == "launch"
    assert "--gpus" in worker["command"]
    # launch exits 1 for a cell failed for good and 2 for bad input: a bounded restart policy
    # lets the container settle there instead of starting its GPU workers over forever.
    policy, _, retries = worker["restart"].partition(":")
    assert policy == "on-failure" and 1 <= int(retries) <= 5


def test_dataset_and_spec_are_read_only_and_state_lives_in_named_volumes() -> None:
    services = _services()
    for name in ("create", "worker"):
        data = _mounts(services[name])["/data"]
        assert data["type"] == "bind" and data["read_only"] is True, name
    assert _mounts(services["create"])["/spec/study.toml"]["read_only"] is True
    declared = _compose()["volumes"]
    worker_mounts = _mounts(services["worker"])
    for target in ("/cache", "/artifacts"):
        assert worker_mounts[target]["type"] == "volume"
        assert worker_mounts[target]["source"] in declared


def test_every_container_finds_the_paths_and_study_that_create_stored() -> None:
    services = _services()
    create = services["create"]["command"]
    assert _set_value(create, "data.root") in _mounts(services["worker"])
    artifacts = _set_value(create, "study.artifacts")
    for name in ("worker", "dashboard"):
        assert _mounts(services[name])[artifacts]["type"] == "volume", name
    assert _option(services["worker"]["command"], "--study") == _set_value(create, "study.name")
    storages = {
        _option(services[name]["command"], "--storage") for name in services if name != "postgres"
    }
    assert len(storages) == 1


def test_cache_volume_is_where_the_image_puts_its_caches() -> None:
    env = _dockerfile_env()
    cache = _mounts(_services()["worker"])["/cache"]["target"]
    assert env["XDG_CACHE_HOME"] == cache
    assert env["KERAS_HOME"].startswith(cache + "/")


# --- Dockerfile -----------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in _final_stage():
        if op == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def _entrypoint() -> list[str]:
    (entrypoint,) = [json.loads(args) for op, args in _final_stage() if op == "ENTRYPOINT"]
    return entrypoint


def test_image_runs_lrstudy_as_a_non_root_user() -> None:
    final = _final_stage()
    assert _entrypoint()[-1] == "lrstudy"
    users = [args for op, args in final if op == "USER"]
    assert users, "the final stage sets no USER, so it runs as root"
    assert users[-1].split(":")[0] not in {"0", "root"}


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5):
            return True
    except (urllib.error.URLError, OSError):
        return False


def test_the_entrypoint_as_pid_1_stops_the_dashboard_on_sigterm(tmp_path: Path) -> None:
    """A container's ENTRYPOINT is PID 1 of its PID namespace, to which the kernel delivers no
    signal it has no handler for: without an init, `lrstudy dashboard` ignores the SIGTERM of
    `kubectl delete` until the SIGKILL 30 s later. Here the image's ENTRYPOINT, with this
    machine's tini and lrstudy, is PID 1 of a new PID namespace and gets SIGTERM from outside it,
    as from the container runtime."""
    import optuna

    tools = {
        "tini": shutil.which("tini"),
        "lrstudy": shutil.which("lrstudy", path=str(Path(sys.executable).parent)),
        "unshare": shutil.which("unshare"),
    }
    missing = [name for name, path in tools.items() if path is None]
    if missing or os.geteuid() != 0:
        reason = f"needs root and {', '.join(tools)} (missing: {', '.join(missing) or 'root'})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; .ci/run installs tini")
        pytest.skip(reason)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="pid1", storage=url)
    entrypoint = [tools.get(word) or word for word in _entrypoint()]

    def start(port: int) -> subprocess.Popen[str]:
        command = [str(tools["unshare"]), "--pid", "--fork", "--kill-child", "--", *entrypoint]
        command += ["dashboard", "--storage", url, "--port", str(port)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    server, _ = serve_on_a_free_port(start, _answers, what="the dashboard as PID 1 to answer")
    try:
        (pid_1,) = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        status = Path(f"/proc/{pid_1}/status").read_text().splitlines()
        (namespace_pids,) = [line.split()[1:] for line in status if line.startswith("NSpid:")]
        assert namespace_pids[-1] == "1"  # its PID in the new namespace
        os.kill(int(pid_1), signal.SIGTERM)
        try:
            server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("PID 1 ignored SIGTERM: the image's ENTRYPOINT needs an init (tini)")
        assert server.returncode == 128 + signal.SIGTERM  # tini's code for a child ended so
    finally:
        server.kill()
        server.communicate()


def test_image_installs_every_package_and_the_build_context_holds_them() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = set()
    for op, args in _dockerfile():
        if op == "COPY" and not args.startswith("--from"):
            copied.update(source.rstrip("/") for source in args.split()[:-1])
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {*(name for name in packages if "." not in name), "pyproject.toml", "README.md"}
    assert needed <= copied, f"the Dockerfile does not copy {sorted(needed - copied)}"
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # An allow-list: .env, .venv and datasets never reach the build.
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert copied <= allowed, f".dockerignore hides {sorted(copied - allowed)}"
    assert not {".env", ".venv"} & allowed


def _pip_installs() -> list[tuple[int, list[str]]]:
    """(instruction index, requirements) of each ``RUN pip install`` of the Dockerfile."""
    return [
        (index, shlex.split(args)[2:])
        for index, (op, args) in enumerate(_dockerfile())
        if op == "RUN" and args.startswith("pip install ")
    ]


def test_image_installs_the_cuda_builds_of_both_backends_before_the_code() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (libraries_at, libraries), (package_at, package) = _pip_installs()
    # One pip call resolves TensorFlow's and JAX's CUDA libraries together (one shared copy),
    # with the requirements of the package's own extras, so that the two cannot drift apart.
    assert libraries == [*extras["gpu"], *extras["jax-cuda"]]
    assert [r.split("]")[0] for r in libraries] == ["tensorflow[and-cuda", "jax[cuda12"]
    assert package == ["/src[gpu,jax-cuda]"]
    # The big, rarely changing layer comes before the code, so a code change reuses it.
    first_copy = min(
        i for i, (op, args) in enumerate(_dockerfile()) if op == "COPY" and "--from" not in args
    )
    assert libraries_at < first_copy < package_at


def test_image_takes_gpu_memory_on_demand_under_both_backends() -> None:
    env = _dockerfile_env()
    assert env["KERAS_BACKEND"] == "tensorflow"  # the default; `docker run -e` chooses another
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    # JAX takes 75% of the GPU at start without this; `launch` sets it too, per worker.
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env  # each worker's share: set by launch


# --- deploy/k8s -----------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "data-loader.yaml"}
    assert set(kustomization["resources"]) == files


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod.get("initContainers", []) + pod["containers"]


def test_k8s_lrstudy_containers_keep_tini_as_pid_1() -> None:
    """A ``command`` replaces the image's ENTRYPOINT, tini with it (see the PID 1 test above)."""
    commands = 0
    for doc in _k8s_documents():
        if doc["kind"] in {"StatefulSet", "Deployment", "Job"}:
            for container in _containers(_pod_spec(doc)):
                if container["image"] == "lrstudy" and "command" in container:
                    assert container["command"][:2] == ["tini", "--"], container["name"]
                    commands += 1
    assert commands == 1  # the worker's wait-for-study; the others take `args` only


def test_k8s_password_comes_only_from_the_secret() -> None:
    docs = _k8s_documents()
    assert not [d for d in docs if d["kind"] == "Secret"], "commit no Secret; create it by hand"
    refs = 0
    for doc in docs:
        for path, value in _walk(doc):
            if isinstance(value, str):
                assert URL_WITH_PASSWORD.search(value) is None, f"{path}: {value!r}"
        if doc["kind"] not in {"StatefulSet", "Deployment", "Job", "Pod"}:
            continue
        pod = doc["spec"] if doc["kind"] == "Pod" else _pod_spec(doc)
        for container in _containers(pod):
            for var in container.get("env", []):
                if SECRET_NAME.search(var["name"]):
                    assert "value" not in var, f"{doc['metadata']['name']}: {var['name']}"
                    assert var["valueFrom"]["secretKeyRef"] == SECRET
                    refs += 1
    # postgres, create, the worker and its init container, the dashboard.
    assert refs == 5


def test_postgres_statefulset_is_health_checked_and_keeps_its_data() -> None:
    statefulset = _k8s("StatefulSet", "postgres")
    (container,) = _pod_spec(statefulset)["containers"]
    assert re.fullmatch(r"postgres:1[5-9](\.\d+)?(-\w+)?", container["image"])
    env = {var["name"]: var for var in container["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == SECRET
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    assert env["PGDATA"]["value"].startswith(mount["mountPath"] + "/")
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[0] == "pg_isready" and _option(command, "-h") == "127.0.0.1"
    service = _k8s("Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["selector"] == statefulset["spec"]["template"]["metadata"]["labels"]


def test_create_job_runs_once_from_the_read_only_spec() -> None:
    job = _k8s("Job", "lrstudy-create")
    pod = _pod_spec(job)
    (container,) = pod["containers"]
    assert container["args"][0] == "create"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    spec_path = _option(container["args"], "--spec")
    assert mounts[str(Path(spec_path).parent)]["readOnly"] is True
    assert pod["restartPolicy"] in {"OnFailure", "Never"}
    assert "parallelism" not in job["spec"] or job["spec"]["parallelism"] == 1


def test_worker_job_runs_one_gpu_per_pod_in_parallel() -> None:
    create = _pod_spec(_k8s("Job", "lrstudy-create"))["containers"][0]["args"]
    job = _k8s("Job", "lrstudy-worker")
    assert isinstance(job["spec"]["parallelism"], int) and job["spec"]["parallelism"] >= 1
    pod = _pod_spec(job)
    (worker,) = pod["containers"]
    # launch, not a bare worker: its GPU slot stops where no GPU is visible, and it exits 143
    # when stopped mid-study, which the Job replaces (an exit 0 would count as done).
    assert worker["args"][0] == "launch" and _option(worker["args"], "--gpus") == "all"
    # Bad input (exit 2) fails the Job rather than restart pods that hold GPUs; a disruption
    # (drain, eviction) is no failure. Such a policy needs pods that are never restarted.
    assert pod["restartPolicy"] == "Never"
    fail, ignore = job["spec"]["podFailurePolicy"]["rules"]
    assert fail == {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}}
    assert ignore["action"] == "Ignore"
    assert ignore["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    (wait,) = pod["initContainers"]
    assert "exit 2" in wait["command"][-1]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    assert mounts[_set_value(create, "data.root")]["readOnly"] is True
    artifacts = mounts[_set_value(create, "study.artifacts")]
    assert artifacts.get("readOnly", False) is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[artifacts["name"]]["persistentVolumeClaim"]["claimName"]
    assert "ReadWriteMany" in _k8s("PersistentVolumeClaim", claim)["spec"]["accessModes"]
    assert mounts[_dockerfile_env()["XDG_CACHE_HOME"]]
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_k8s_pods_run_as_non_root_and_nothing_is_exposed_outside_the_cluster() -> None:
    for kind, name in (
        ("Job", "lrstudy-create"),
        ("Job", "lrstudy-worker"),
        ("Deployment", "lrstudy-dashboard"),
    ):
        security = _pod_spec(_k8s(kind, name))["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, name
    for doc in _k8s_documents():
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
        assert doc["kind"] != "Ingress"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector["matchLabels"].items() <= labels.items()


def test_k8s_network_policies_close_the_dashboard_and_open_postgres_to_lrstudy_only() -> None:
    """optuna-dashboard has no login and can delete the study: no pod may reach it."""
    dashboard = _k8s("NetworkPolicy", "lrstudy-dashboard")["spec"]
    dashboard_pod = _k8s("Deployment", "lrstudy-dashboard")["spec"]["template"]["metadata"]
    assert _selects(dashboard["podSelector"], dashboard_pod["labels"])
    assert dashboard["policyTypes"] == ["Ingress"] and not dashboard.get("ingress")
    postgres = _k8s("NetworkPolicy", "lrstudy-postgres")["spec"]
    postgres_pod = _k8s("StatefulSet", "postgres")["spec"]["template"]["metadata"]
    assert _selects(postgres["podSelector"], postgres_pod["labels"])
    (rule,) = postgres["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]
    (source,) = rule["from"]
    for kind, name in (
        ("Job", "lrstudy-create"),
        ("Job", "lrstudy-worker"),
        ("Deployment", "lrstudy-dashboard"),
    ):
        labels = _k8s(kind, name)["spec"]["template"]["metadata"]["labels"]
        assert _selects(source["podSelector"], labels), name


@pytest.mark.parametrize("workload", ["lrstudy-create", "lrstudy-worker"])
def test_k8s_jobs_use_the_study_and_storage_of_the_config(workload: str) -> None:
    config = _k8s("ConfigMap", "lrstudy")["data"]
    assert URL_WITH_PASSWORD.search(config["LRSTUDY_STORAGE"]) is None
    (container,) = _pod_spec(_k8s("Job", workload))["containers"]
    env = {var["name"]: var for var in container["env"]}
    for key in ("LRSTUDY_STORAGE", "LRSTUDY_STUDY"):
        assert env[key]["valueFrom"]["configMapKeyRef"] == {"name": "lrstudy", "key": key}
    assert _option(container["args"], "--storage") == "$(LRSTUDY_STORAGE)"
