"""Redaction canaries: secrets logged every way never reach the output; ordinary text survives."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from numail import redact

CANARIES = {
    "password": "Canary-Pa55word-7f3a",
    "app_password": "abcd efgh ijkl mnop",
    "client_secret": "csecret~Q8Z.canary",
    "imap_pin": "pin-canary-0042",
}
SHAPES = {
    "google access token": "ya29.a0AfH6SMBcanaryTokenValue_123",
    "google refresh token": "1//0gCanaryRefreshTokenValue-xyz",
    "jwt": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.c2lnbmF0dXJlY2FuYXJ5",
    "sealed frame": "Tk1TRgEAAAABcanaryframebytes0123456789abcdef",
}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """A handler added the way kopf and basicConfig add theirs, then install_redaction()."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s %(extra_field)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    redact.register(*CANARIES.values())
    redact.install_redaction()
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


class Holder:
    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __repr__(self) -> str:
        return f"Holder(secret={self.secret})"


def log_every_way(logger: logging.Logger, secret: str) -> None:
    ctx = {"extra_field": ""}
    logger.info(f"f-string {secret}", extra=ctx)
    logger.info("percent %s and %r", secret, secret, extra=ctx)
    logger.info("dict %(s)s", {"s": secret}, extra=ctx)
    logger.warning("object %s", Holder(secret), extra=ctx)
    logger.info("extra field", extra={"extra_field": secret})
    logger.info("extra dict", extra={"extra_field": {"nested": [secret]}})
    try:
        raise ValueError(f"login failed for password={secret}")
    except ValueError:
        logger.exception("traceback follows", extra=ctx)
    try:
        raise RuntimeError("wrapped") from KeyError(secret)
    except RuntimeError:
        logger.error("chained", exc_info=True, extra=ctx)
    logger.info("stack", stack_info=True, extra=ctx)


@pytest.mark.parametrize(
    "logger_name", ["", "numail", "kopf", "kopf.objects", "aiohttp.access", "urllib3"]
)
def test_no_canary_reaches_the_output(captured: io.StringIO, logger_name: str) -> None:
    logger = logging.getLogger(logger_name)
    for secret in [*CANARIES.values(), *SHAPES.values()]:
        log_every_way(logger, secret)
    out = captured.getvalue()
    assert out.count("[REDACTED]") >= 8 * len(CANARIES)
    for name, secret in {**CANARIES, **SHAPES}.items():
        assert secret not in out, f"{name} leaked through {logger_name or 'root'}"
    assert "Tk1TRgEAAAABcanary" not in out


@pytest.mark.parametrize("log_format", ["FULL", "JSON"])
def test_kopf_handlers_and_object_loggers_are_covered(
    captured: io.StringIO, log_format: str
) -> None:
    import kopf

    root = logging.getLogger()
    before = list(root.handlers)
    kopf.configure(debug=True, log_format=getattr(kopf.LogFormat, log_format))
    redact.install_redaction()  # the operator calls it again after kopf has set up logging
    added = [h for h in root.handlers if h not in before]
    assert added, "kopf.configure should add its own handler"
    stream = io.StringIO()
    try:
        for h in added:
            assert isinstance(h, logging.StreamHandler)
            h.setStream(stream)
        body = {"metadata": {"name": "sales", "namespace": "ws-a", "uid": "u1"}, "kind": "Mailbox"}
        obj_logger = kopf.LocalObjectLogger(body=body, settings=kopf.OperatorSettings())
        obj_logger.info("verified with password=%s", CANARIES["password"])
        try:
            raise ConnectionError(f"smtp://sales:{CANARIES['imap_pin']}@smtp.example")
        except ConnectionError:
            logging.getLogger("kopf.objects").exception("handler failed")
        out = stream.getvalue()
        assert "verified with password=[REDACTED]" in out
        assert "handler failed" in out
        for secret in CANARIES.values():
            assert secret not in out
    finally:
        for h in added:
            root.removeHandler(h)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer [REDACTED]"),
        ("authorization=Basic dXNlcjpwYXNz", "authorization=Basic [REDACTED]"),
        (
            "connect to smtp://sales:s3cr3t@smtp.example:587",
            "connect to smtp://sales:[REDACTED]@smtp.example:587",
        ),
        (
            '{"refresh_token": "1//abcdefghijkl", "expires_in": 3599}',
            '{"refresh_token": "[REDACTED]", "expires_in": 3599}',
        ),
        ("password=hunter2&user=bob", "password=[REDACTED]&user=bob"),
        ("pass: hunter2", "pass: [REDACTED]"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
            "-----BEGIN RSA PRIVATE KEY-----[REDACTED]-----END RSA PRIVATE KEY-----",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nMIIE truncated",
            "-----BEGIN PRIVATE KEY-----[REDACTED]-----END PRIVATE KEY-----",
        ),
    ],
)
def test_known_shapes_are_masked(text: str, expected: str) -> None:
    assert redact.redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "reconciled workspace acme-agency in 0.42s (generation 3)",
        "sent message <20261129.abc@client1.example> to lead 42",
        "Mailbox ws-acme/sales Verified=True reason=Connected",
        "public key nm1.AbCd.EfGh is published in status.sealingPublicKey",
        "key version 2 of 3; retry in 30s; host smtp.client1.example:587",
        "passing test, tokens counted: 3",
    ],
)
def test_ordinary_text_is_left_intact(text: str) -> None:
    assert redact.redact(text) == text


def test_registered_values_are_masked_and_can_be_forgotten() -> None:
    redact.register("one-off-secret-9")
    assert redact.redact("x one-off-secret-9 y") == "x [REDACTED] y"
    redact.forget("one-off-secret-9")
    assert redact.redact("x one-off-secret-9 y") == "x one-off-secret-9 y"
