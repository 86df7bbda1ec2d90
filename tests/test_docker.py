"""Static checks of the Dockerfile, .dockerignore, compose file and docker/ scripts (no build).

`make docker-test` builds and runs the image; these keep the files honest in `make test`.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("serve-cpu", "serve-gpu", "train-gpu")
CODE = ("model", "app", "training", "pix2pix")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for word, rest in self.instructions if word == keyword]


def parse_dockerfile(text: str) -> tuple[list[tuple[str, str]], list[Stage]]:
    """(instructions before the first FROM, stages); continuation lines joined."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    preamble: list[tuple[str, str]] = []
    stages: list[Stage] = []
    for line in logical:
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            stages.append(Stage(match[2], match[1]))
        elif stages:
            stages[-1].instructions.append((word, rest))
        else:
            preamble.append((word, rest))
    return preamble, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[tuple[str, str]], dict[str, Stage], list[Stage]]:
    preamble, stages = parse_dockerfile((ROOT / "Dockerfile").read_text())
    return preamble, {stage.name: stage for stage in stages}, stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and its ancestors, oldest first."""
    result = [stages[name]]
    while result[0].base in stages:
        result.insert(0, stages[result[0].base])
    return result


def copy_sources(stage: Stage) -> list[str]:
    """Build-context paths that a stage's COPY instructions read (not --from=)."""
    sources = []
    for rest in stage.args("COPY"):
        words = shlex.split(rest)
        if any(word.startswith("--from=") for word in words):
            continue
        sources += [word for word in words[:-1] if not word.startswith("--")]
    return sources


def installs(stage: Stage) -> bool:
    return any("pip-install.sh" in rest or "pip install" in rest for rest in stage.args("RUN"))


def test_dockerfile_has_the_three_targets_and_serve_cpu_is_the_default(dockerfile):
    _, stages, ordered = dockerfile
    for target in TARGETS:
        assert target in stages
    assert ordered[-1].name == "serve-cpu", "the last stage is what a plain docker build makes"


def test_base_image_is_one_build_argument_with_a_default_per_kind(dockerfile):
    preamble, stages, _ = dockerfile
    assert ("ARG", 'BASE_IMAGE=""') in preamble
    cpu_root = chain(stages, "serve-cpu")[0].base
    assert re.fullmatch(r"\$\{BASE_IMAGE:-python:3\.1[1-9]-slim[\w.-]*\}", cpu_root), cpu_root
    for target in ("serve-gpu", "train-gpu"):
        root = chain(stages, target)[0].base
        assert re.fullmatch(r"\$\{BASE_IMAGE:-nvidia/cuda:[\w.-]+\}", root), root


def test_serve_cpu_has_no_torch_and_no_training_code(dockerfile):
    _, stages, _ = dockerfile
    used = {stage.name for stage in chain(stages, "serve-cpu")}
    for rest in stages["serve-cpu"].args("COPY"):
        source = re.search(r"--from=(\S+)", rest)
        if source:
            used |= {stage.name for stage in chain(stages, source[1])}
    assert {"cpu-base", "cpu-deps", "cpu-models"} <= used
    for stage in (stages[name] for name in used):
        for source in copy_sources(stage):
            assert not source.startswith(("training", "pix2pix", "pyproject")), (stage.name, source)
        for rest in stage.args("RUN"):
            assert "torch" not in rest, (stage.name, rest)
    requirements = (ROOT / "requirements/serve-cpu.txt").read_text()
    for forbidden in ("torch", "albumentations", "matplotlib", "torchmetrics"):
        assert not re.search(rf"^{forbidden}\b", requirements, re.MULTILINE), forbidden


def requirement_lines(text: str) -> dict[str, str]:
    lines = [line.strip() for line in text.splitlines()]
    return {
        re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower(): line
        for line in lines
        if line and not line.startswith("#")
    }


def test_serve_cpu_requirements_keep_pyproject_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {
        name: re.sub(r"\[[^\]]*\]", "", line)
        for name, line in requirement_lines("\n".join(project)).items()
    }
    serving = requirement_lines((ROOT / "requirements/serve-cpu.txt").read_text())
    for name in ("numpy", "pillow", "fastapi", "uvicorn", "onnxruntime", "python-multipart"):
        assert name in serving, name
    for name, line in serving.items():
        assert name in declared, f"{name} is not a project dependency"
        assert re.sub(r"\[[^\]]*\]", "", line) == declared[name], (line, declared[name])


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_runs_as_a_non_root_user(dockerfile, target):
    _, stages, _ = dockerfile
    users = [user for stage in chain(stages, target) for user in stage.args("USER")]
    assert users, f"{target} sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]


@pytest.mark.parametrize("target", ["serve-cpu", "serve-gpu"])
def test_service_targets_expose_8000_check_healthz_and_read_models(dockerfile, target):
    _, stages, _ = dockerfile
    stage = stages[target]
    assert "8000" in stage.args("EXPOSE")
    healthchecks = stage.args("HEALTHCHECK")
    assert len(healthchecks) == 1 and "/healthz" in healthchecks[0]
    environment = " ".join(stage.args("ENV"))
    assert "PIX2PIX_MODELS_DIR=/models" in environment
    assert "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN=" in environment
    assert any(rest.endswith(" /models") for rest in stage.args("COPY"))
    command = stage.args("CMD")[-1]
    assert command.startswith('["uvicorn", "app.main:create_app", "--factory"'), command
    assert not stage.args("ENTRYPOINT"), "exec-form uvicorn is PID 1 and gets SIGTERM itself"


# `docker stop` sends SIGKILL this many seconds after SIGTERM unless told otherwise.
DOCKER_STOP_GRACE_S = 10


@pytest.mark.parametrize("target", ["serve-cpu", "serve-gpu"])
def test_the_drain_deadline_fits_inside_uvicorns_timeout_and_docker_stop(dockerfile, target):
    from app.settings import Settings

    _, stages, _ = dockerfile
    environment = dict(
        item.split("=", 1) for line in stages[target].args("ENV") for item in line.split()
    )
    drain = float(environment["PIX2PIX_DRAIN_TIMEOUT_S"])
    assert drain == Settings().drain_timeout_s
    # The service answers (or refuses) every request before uvicorn cancels any, and uvicorn
    # is done before docker stop's SIGKILL.
    assert drain < float(environment["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"]) < DOCKER_STOP_GRACE_S


def test_the_compose_files_drain_fits_inside_its_stop_grace_period():
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for service in services.values():
        environment, grace = service["environment"], service["stop_grace_period"]
        drain = float(environment["PIX2PIX_DRAIN_TIMEOUT_S"])
        assert drain < float(environment["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"])
        assert float(environment["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"]) < float(grace.rstrip("s"))


def test_code_is_copied_after_the_dependency_layers(dockerfile):
    """A code change must not reinstall packages: no install runs after code is copied."""
    _, stages, _ = dockerfile
    for target in TARGETS:
        code_seen = False
        for stage in chain(stages, target):
            for word, rest in stage.instructions:
                if word == "COPY" and any(
                    source.split("/")[0] in CODE
                    for source in copy_sources(Stage("", "", [(word, rest)]))
                ):
                    code_seen = True
                if word == "RUN" and code_seen:
                    assert "pip-install.sh" not in rest, (target, rest)
                    assert "--no-deps" in rest or "pip install" not in rest, (target, rest)


def test_every_installing_stage_takes_the_ca_bundle_argument(dockerfile):
    _, stages, _ = dockerfile
    installing = [
        stage
        for stage in stages.values()
        if any("pip-install.sh" in rest for rest in stage.args("RUN"))
    ]
    assert installing
    for stage in installing:
        assert any(rest.startswith("CA_BUNDLE") for rest in stage.args("ARG")), stage.name


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a directory match covers its contents."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*")
        regex = regex.replace("[^/]*[^/]*/", "(.*/)?") if pattern.startswith("**/") else regex
        if any(re.match(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "runs/facades/checkpoints/latest/generator.safetensors",
        "data/facades/train/1.jpg",
        "datasets/maps/a.png",
        "app/__pycache__/main.cpython-311.pyc",
        "model/__pycache__/runtime.cpython-311.pyc",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/x",
        ".git/HEAD",
        ".env",
        "pix2pix.egg-info/PKG-INFO",
        "tests/artifacts/x.png",
    ],
)
def test_dockerignore_keeps_environments_runs_data_and_caches_out(ignore_patterns, path):
    assert dockerignore_excludes(ignore_patterns, path)


def test_dockerignore_keeps_what_the_dockerfile_copies(dockerfile, ignore_patterns):
    _, stages, _ = dockerfile
    sources = {source for stage in stages.values() for source in copy_sources(stage)}
    sources.discard("${MODELS}")
    sources |= {"models/labels2photo/spec.json", "docker/certs/README.md", "app/static/app.js"}
    for source in sources:
        assert not dockerignore_excludes(ignore_patterns, source), source
        if not source.startswith("models/"):
            assert (ROOT / source).exists(), source


def test_compose_file_has_models_volume_api_key_limits_and_a_gpu_variant():
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    cpu, gpu = services["pix2pix"], services["pix2pix-gpu"]
    assert cpu["build"]["target"] == "serve-cpu" and gpu["build"]["target"] == "serve-gpu"
    for service in (cpu, gpu):
        assert any(volume.split(":")[1] == "/models" for volume in service["volumes"])
        assert service["environment"]["PIX2PIX_API_KEY"].startswith("${PIX2PIX_API_KEY")
        assert service["deploy"]["resources"]["limits"]["memory"]
    assert "profiles" not in cpu and gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


@pytest.mark.parametrize("script", sorted((ROOT / "docker").glob("*.sh")), ids=lambda p: p.name)
def test_docker_scripts_parse(script):
    shell = "bash" if script.read_text().startswith("#!/bin/bash") else "sh"
    result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_gpu_dependency_lists_split_pyproject_into_torch_and_the_rest():
    def listed(*args: str) -> list[str]:
        result = subprocess.run(
            [sys.executable, "docker/project_dependencies.py", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        return result.stdout.split()

    torch, rest = listed("--only", "torch,torchvision"), listed("--except", "torch,torchvision")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(torch + rest) == sorted(project)
    assert {line.split(">")[0] for line in torch} == {"torch", "torchvision"}


def test_docker_test_is_a_make_target_outside_make_test():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^docker-test:", makefile, re.MULTILINE)
    test_rule = re.search(r"^test:(.*)$", makefile, re.MULTILINE)
    assert test_rule and "docker" not in test_rule[1]
