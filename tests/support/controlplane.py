"""Starts the Go local control plane (hack/controlplane) and waits for /readyz."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def controlplane_binary() -> Path:
    """The cached binary `make controlplane` built; its name carries a hash of the Go sources."""
    explicit = os.environ.get("NUMAIL_CONTROLPLANE_BIN")
    if explicit:
        return Path(explicit)
    out = subprocess.run(
        ["make", "-s", "-C", str(REPO), "controlplane-path"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Path(out)


@dataclass
class ControlPlane:
    """A running control plane: where its kubeconfig is and how to reach it."""

    data_dir: Path
    kubeconfig: Path
    server: str
    process: subprocess.Popen[bytes]
    started_in: float

    def ssl_context(self) -> ssl.SSLContext:
        return _ssl_context(self.kubeconfig)

    def get(self, path: str) -> tuple[int, str]:
        req = urllib.request.Request(self.server + path)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def _ssl_context(kubeconfig: Path) -> ssl.SSLContext:
    import base64
    import tempfile

    cfg = yaml.safe_load(kubeconfig.read_text())
    cluster = cfg["clusters"][0]["cluster"]
    user = cfg["users"][0]["user"]
    ctx = ssl.create_default_context(
        cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
    )
    with tempfile.TemporaryDirectory() as tmp:
        cert = Path(tmp, "c.crt")
        key = Path(tmp, "c.key")
        cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        ctx.load_cert_chain(cert, key)
    return ctx


def start_controlplane(data_dir: Path, timeout: float = 240) -> ControlPlane:
    """Start the binary with its data under data_dir and block until /readyz answers 200."""
    binary = controlplane_binary()
    if not binary.exists():
        raise RuntimeError(
            f"control plane binary {binary} is missing: run `make controlplane` first"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "controlplane.log", "ab")  # noqa: SIM115 - lives as long as the process
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(binary), "--data-dir", str(data_dir), "--unsafe-no-fsync"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    state = data_dir / "state.json"
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"control plane exited with {proc.returncode}; see {data_dir / 'controlplane.log'}"
            )
        if state.exists():
            info = json.loads(state.read_text())
            if info.get("pid") == proc.pid:
                cp = ControlPlane(
                    data_dir=data_dir,
                    kubeconfig=Path(info["kubeconfig"]),
                    server=info["server"],
                    process=proc,
                    started_in=0.0,
                )
                status, _ = cp.get("/readyz")
                if status == 200:
                    cp.started_in = time.monotonic() - started
                    return cp
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(
        f"control plane not ready in {timeout}s; see {data_dir / 'controlplane.log'}"
    )
