"""Runs the operator as a real process (`python -m numail_operator`) against a control plane."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.postgres import free_port


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int
    liveness_port: int
    env: dict[str, str]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2
            ) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return r.read().decode()

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crashed or OOM-killed Pod."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def start_operator(
    kubeconfig: Path, workdir: Path, extra_env: dict[str, str] | None = None, timeout: float = 60
) -> OperatorProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    keyring = workdir / "keyring"
    if not keyring.exists():
        from numail.keys.local import generate_keyring

        keyring.write_text(generate_keyring())
        keyring.chmod(0o600)
    metrics_port, liveness_port = free_port(), free_port()
    env = dict(
        os.environ,
        KUBECONFIG=str(kubeconfig),
        NUMAIL_LOCAL_KEYRING_FILE=str(keyring),
        NUMAIL_METRICS_PORT=str(metrics_port),
        NUMAIL_LIVENESS_PORT=str(liveness_port),
        **(extra_env or {}),
    )
    log = workdir / "operator.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "numail_operator"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    op = OperatorProcess(proc, log, metrics_port, liveness_port, env)
    deadline = time.monotonic() + timeout
    while not op.healthy():
        if proc.poll() is not None or time.monotonic() > deadline:
            op.kill()
            raise RuntimeError(f"operator did not become live:\n{log.read_text()[-4000:]}")
        time.sleep(0.25)
    return op
