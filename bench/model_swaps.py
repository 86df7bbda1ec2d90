"""Model swaps while bench/load.py's load runs: every model replaced again and again, as deploys do.

Each model is replaced ``replacements`` times, in turn by the two atomic deploys the README
describes: a new version copied beside the served one under a hidden name and renamed into
place (the old folder moved away first), and a symlink to a new version swapped in with one
rename. After every third replacement a corrupt version (its weights cut in half) is renamed
into place, which the service must refuse while the version before it keeps serving. Each new
version differs from the last by a revision number in its spec, so its version (content hash)
is new. The deploys are spread over the run by how many of its requests have been sent, one
round (every model once) at a time, and each waits until ``GET /v1/models`` shows the new
version serving (or the refusal) before the next deploy of that model.

The deploy times let the load check that every answer names the version it was computed with:
a version answers only after its files were deployed and only for requests sent before the
version after it was seen serving.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from model.model_folders import SPEC_FILENAME, WEIGHT_FILES, model_version

# How long a deploy may take to show in the listing (loading a model on a saturated CPU).
CONFIRM_TIMEOUT_S = 180.0
POLL_INTERVAL_S = 0.1
# A corrupt version after every this many replacements of a model.
CORRUPT_EVERY = 3


@dataclass
class Deploy:
    """One change to a model folder and when the service showed it."""

    model: str
    kind: str  # "rename", "symlink" or "corrupt"
    version: str  # the version deployed (for "corrupt", the one that must keep serving)
    changed: float  # perf_counter when the folder changed
    confirmed: float | None = None  # when /v1/models showed it; None: it never did
    problem: str | None = None


@dataclass
class Timeline:
    """The versions of one model in the order they served, with when each began and ended."""

    versions: list[str] = field(default_factory=list)
    deployed: dict[str, float] = field(default_factory=dict)  # files in place
    superseded: dict[str, float] = field(default_factory=dict)  # next version seen serving

    def explains(self, version: str | None, sent: float, done: float) -> bool:
        """Whether ``version`` could have answered a request sent at ``sent``, done at ``done``."""
        if version not in self.deployed:
            return False
        return self.deployed[version] <= done and sent <= self.superseded.get(version, sent)


class ModelSwapper:
    """Deploys new versions of every model in ``models`` while ``progress()`` runs from 0 to 1."""

    def __init__(
        self,
        url: str,
        models: Path,
        versions: Path,
        names: list[str],
        replacements: int,
        progress: Callable[[], float],
    ):
        self.url, self.models, self.versions = url, models, versions
        self.names, self.replacements, self.progress = names, replacements, progress
        self.deploys: list[Deploy] = []
        self.timelines: dict[str, Timeline] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-swaps", daemon=True)
        self._revision = 0
        # Every new version is made from the version served at the start, kept here.
        self._sources: dict[str, Path] = {}
        for name in names:
            self._sources[name] = shutil.copytree(models / name, versions / f"{name}-0")
            first = model_version(models / name)
            self.timelines[name] = Timeline([first], {first: float("-inf")})

    # -- the plan ------------------------------------------------------------------------------

    def plan(self) -> list[str]:
        """The kinds of deploy every model goes through, in order."""
        kinds = []
        for index in range(self.replacements):
            kinds.append("rename" if index % 2 == 0 else "symlink")
            if index % CORRUPT_EVERY == CORRUPT_EVERY - 1:
                kinds.append("corrupt")
        return kinds

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Let the round in progress finish (up to ``timeout`` s), then stop deploying."""
        self._stop.set()
        self._thread.join(timeout)

    @property
    def replaced(self) -> int:
        return sum(d.kind != "corrupt" and d.confirmed is not None for d in self.deploys)

    @property
    def refused(self) -> int:
        return sum(d.kind == "corrupt" and d.confirmed is not None for d in self.deploys)

    @property
    def problems(self) -> list[str]:
        planned = len(self.plan()) * len(self.names)
        found = [f"{d.model} ({d.kind}): {d.problem}" for d in self.deploys if d.problem]
        if len(self.deploys) < planned:
            found.append(f"only {len(self.deploys)} of {planned} deploys ran while the load ran")
        return found

    def _run(self) -> None:
        rounds = self.plan()
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for index, kind in enumerate(rounds):
                # Round r starts once r+1 of len(rounds)+1 equal parts of the requests were sent.
                while self.progress() < (index + 1) / (len(rounds) + 1):
                    if self._stop.wait(0.2):
                        return
                started = [self._deploy(name, kind) for name in self.names]
                for deploy in started:
                    self._confirm(client, deploy)
                if self._stop.is_set():
                    return

    # -- deploying -----------------------------------------------------------------------------

    def _new_version(self, name: str, corrupt: bool) -> Path:
        """A copy of the first version under ``versions`` with the next revision number."""
        self._revision += 1
        folder = shutil.copytree(self._sources[name], self.versions / f"{name}-{self._revision}")
        spec_path = folder / SPEC_FILENAME
        spec = json.loads(spec_path.read_text())
        spec.setdefault("extra", {})["revision"] = self._revision
        spec_path.write_text(json.dumps(spec, indent=2) + "\n")
        if corrupt:
            for weights in (folder / file for file in WEIGHT_FILES):
                if weights.is_file():
                    data = weights.read_bytes()
                    weights.write_bytes(data[: len(data) // 2])
        return folder

    def _deploy(self, name: str, kind: str) -> Deploy:
        timeline = self.timelines[name]
        folder = self._new_version(name, corrupt=kind == "corrupt")
        version = timeline.versions[-1] if kind == "corrupt" else model_version(folder)
        served = self.models / name
        if kind == "symlink":
            link = self.models / f".{name}-next"
            link.symlink_to(folder.resolve(), target_is_directory=True)
            if served.is_symlink():
                changed = time.perf_counter()
                os.replace(link, served)  # one rename: never a moment without the model
            else:  # a symlink cannot replace a folder in one rename: move the folder away first
                os.rename(served, self.models / f".{name}-old")
                os.replace(link, served)
                changed = time.perf_counter()
        else:
            staged = self.models / f".{name}-new"
            shutil.copytree(folder, staged)
            os.rename(served, self.models / f".{name}-old")
            os.rename(staged, served)
            changed = time.perf_counter()
        self._remove(self.models / f".{name}-old")
        if kind != "corrupt":
            timeline.deployed[version] = changed
        deploy = Deploy(name, kind, version, changed)
        self.deploys.append(deploy)
        return deploy

    def _confirm(self, client: httpx.Client, deploy: Deploy) -> None:
        """Wait until the listing shows the new version serving, or the corrupt one refused."""
        timeline = self.timelines[deploy.model]
        deadline = time.perf_counter() + CONFIRM_TIMEOUT_S
        while time.perf_counter() < deadline:
            listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
            model = listed.get(deploy.model)
            now = time.perf_counter()
            if deploy.kind == "corrupt":
                if (
                    model
                    and model["version"] == deploy.version
                    and "refused" in (model["error"] or "")
                ):
                    deploy.confirmed = now
                    return
                if model and model["version"] != deploy.version:
                    deploy.problem = f"served {model['version']} instead of refusing"
                    return
            elif model and model["version"] == deploy.version and model["status"] == "ready":
                deploy.confirmed = now
                timeline.superseded[timeline.versions[-1]] = now
                timeline.versions.append(deploy.version)
                return
            time.sleep(POLL_INTERVAL_S)
        deploy.problem = f"not shown by /v1/models within {CONFIRM_TIMEOUT_S:.0f} s"

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
