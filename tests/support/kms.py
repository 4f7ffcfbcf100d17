"""Real KMS backends for tests: moto's KMS server as a subprocess, and a SoftHSM2 token.

SoftHSM2 reads SOFTHSM2_CONF once, when python-pkcs11 first initialises the module, and does not
see tokens created after that. So a test process gets one SoftHSM configuration: call
`softhsm_token` once (the session fixture `softhsm` does), before anything loads the module.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

from numail.keys.awskms import AwsKmsKeyProvider
from numail.keys.pkcs11 import Pkcs11KeyProvider
from tests.support.postgres import free_port

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

REGION = "us-east-1"

# Fake credentials, and no AWS config files or instance metadata, so a test can never reach
# real AWS or hang on IMDS when something is misconfigured.
AWS_TEST_ENV: Mapping[str, str] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}

# moto 5 encrypts and decrypts under a disabled key; AWS refuses with DisabledException (and
# KMSInvalidStateException while deletion is pending). This adds AWS's checks to moto's own
# server, so tests exercise the provider's handling of the errors AWS really returns.
_MOTO_SERVER = """
import sys

from moto.core.exceptions import JsonRESTError
from moto.kms.models import KmsBackend
from moto.server import main


def _require_usable(backend, key_id):
    key = backend.keys.get(backend.any_id_to_key_id(key_id))
    if key is None or key.key_state == "Enabled":
        return
    if key.key_state == "Disabled":
        raise JsonRESTError("DisabledException", f"{key.arn} is disabled.")
    raise JsonRESTError("KMSInvalidStateException", f"{key.arn} is {key.key_state}.")


_encrypt, _decrypt = KmsBackend.encrypt, KmsBackend.decrypt


def encrypt(self, key_id, plaintext, encryption_context):
    _require_usable(self, key_id)
    return _encrypt(self, key_id, plaintext, encryption_context)


def decrypt(self, ciphertext_blob, encryption_context, key_id=None):
    plaintext, arn = _decrypt(self, ciphertext_blob, encryption_context, key_id)
    _require_usable(self, arn)
    return plaintext, arn


KmsBackend.encrypt, KmsBackend.decrypt = encrypt, decrypt
main(sys.argv[1:])
"""


@dataclass
class MotoServer:
    """moto's server, answering AWS APIs (KMS among them) at `endpoint`."""

    process: subprocess.Popen[bytes]
    endpoint: str
    log: Path
    env: Mapping[str, str] = field(default_factory=lambda: dict(AWS_TEST_ENV))

    def client(self) -> KMSClient:
        return boto3.session.Session().client(
            "kms",
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=self.env["AWS_SESSION_TOKEN"],
        )

    def create_key(self, description: str = "numail test KEK") -> str:
        """A new symmetric ENCRYPT_DECRYPT key; returns its ARN."""
        meta = self.client().create_key(
            Description=description, KeyUsage="ENCRYPT_DECRYPT", KeySpec="SYMMETRIC_DEFAULT"
        )["KeyMetadata"]
        return meta["Arn"]

    def set_enabled(self, key_arn: str, enabled: bool) -> None:
        """moto's EnableKey and DisableKey take the bare key id, not the ARN."""
        key_id = key_arn.rsplit("/", 1)[-1]
        if enabled:
            self.client().enable_key(KeyId=key_id)
        else:
            self.client().disable_key(KeyId=key_id)

    def provider_config(self, key_id: str) -> dict[str, Any]:
        """The KeyProvider CR's spec.awsKms for `key_id` on this server."""
        return {"keyId": key_id, "region": REGION, "endpointUrl": self.endpoint}

    def provider(self, key_id: str) -> AwsKmsKeyProvider:
        """Needs AWS_TEST_ENV in os.environ: the provider takes credentials from the chain."""
        return AwsKmsKeyProvider.from_config(self.provider_config(key_id))

    def stop(self, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        shutil.rmtree(self.log.parent, ignore_errors=True)
        return self.process.returncode


def start_moto_server(timeout: float = 30) -> MotoServer:
    """Equivalent to `moto_server -H 127.0.0.1 -p PORT`, plus the disabled-key checks above."""
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="numail-moto-"))
    log = root / "moto.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", _MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **AWS_TEST_ENV},
        )
    server = MotoServer(process=process, endpoint=f"http://127.0.0.1:{port}", log=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"moto server did not listen on port {port} within {timeout}s")


SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_softhsm_conf: Path | None = None


@dataclass
class SoftHsmToken:
    """An initialised SoftHSM2 token holding the first version of a non-extractable AES KEK."""

    conf: Path
    token_label: str
    key_label: str
    pin: str
    so_pin: str
    pin_env: str
    env: Mapping[str, str]

    def config(self, **overrides: Any) -> dict[str, Any]:
        """The KeyProvider CR's spec.pkcs11 for this token; an override of None drops a key."""
        config: dict[str, Any] = {
            "module": SOFTHSM_MODULE,
            "tokenLabel": self.token_label,
            "keyLabel": self.key_label,
            "pinEnv": self.pin_env,
        }
        config.update(overrides)
        return {k: v for k, v in config.items() if v is not None}

    def provider(self, **overrides: Any) -> Pkcs11KeyProvider:
        return Pkcs11KeyProvider.from_config(self.config(**overrides))


def softhsm_token(
    tmpdir: Path,
    *,
    token_label: str = "numail-test",
    key_label: str = "numail-kek",
    pin: str = "4711-user",
    so_pin: str = "4711-so",
    pin_env: str = "NUMAIL_TEST_HSM_PIN",
) -> SoftHsmToken:
    """Write a softhsm2.conf with its token directory in `tmpdir`, point SOFTHSM2_CONF and
    `pin_env` at it in os.environ (returned as `env` too), initialise the token and generate
    the first key. Once per process: see the module docstring."""
    global _softhsm_conf
    if _softhsm_conf is not None:
        raise RuntimeError(
            f"SoftHSM2 is already configured from {_softhsm_conf} in this process, and reads "
            "its configuration only once; share the session fixture `softhsm`"
        )
    util = shutil.which("softhsm2-util")
    if util is None or not Path(SOFTHSM_MODULE).exists():
        raise RuntimeError("SoftHSM2 is missing: install Debian's softhsm2 package")
    tokens = tmpdir / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = tmpdir / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {"SOFTHSM2_CONF": str(conf), pin_env: pin}
    os.environ.update(env)
    subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            token_label,
            "--pin",
            pin,
            "--so-pin",
            so_pin,
        ],
        check=True,
        capture_output=True,
        env={**os.environ, **env},
    )
    _softhsm_conf = conf
    token = SoftHsmToken(
        conf=conf,
        token_label=token_label,
        key_label=key_label,
        pin=pin,
        so_pin=so_pin,
        pin_env=pin_env,
        env=env,
    )
    token.provider().ensure_key()
    return token
