"""Runs the key service as a real process (`python -m numail_operator.keyservice`) over TLS."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.postgres import free_port
from tests.support.tls import make_serving_cert


@dataclass
class KeyServiceProcess:
    url: str
    ca: Path
    log: Path
    process: subprocess.Popen[bytes]

    def metrics(self) -> str:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        with urllib.request.urlopen(self.url + "/metrics", context=ctx, timeout=10) as resp:
            return resp.read().decode()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_keyservice(kubeconfig: Path, workdir: Path, keyring: Path) -> KeyServiceProcess:
    """Serve on a free loopback port with a fresh test CA; block until /metrics answers."""
    certs = make_serving_cert(workdir / "tls")
    port = free_port()
    log = workdir / "keyservice.log"
    env = dict(
        os.environ,
        KUBECONFIG=str(kubeconfig),
        NUMAIL_KEYSERVICE_HOST="127.0.0.1",
        NUMAIL_KEYSERVICE_PORT=str(port),
        NUMAIL_KEYSERVICE_TLS_CERT=str(certs.cert),
        NUMAIL_KEYSERVICE_TLS_KEY=str(certs.key),
        NUMAIL_LOCAL_KEYRING_FILE=str(keyring),
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "numail_operator.keyservice"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = KeyServiceProcess(f"https://127.0.0.1:{port}", certs.ca, log, proc)
    deadline = time.monotonic() + 30
    while True:
        try:
            service.metrics()
            return service
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"key service did not start: {log.read_text()}") from None
            time.sleep(0.2)
