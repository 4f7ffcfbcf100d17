"""`python -m numail_operator`: run the operator cluster-wide with a liveness endpoint."""

from __future__ import annotations

import logging

import kopf

import numail_operator  # noqa: F401 - registers the handlers
from numail.redact import install_redaction
from numail_operator.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    kopf.configure(verbose=False, log_format=kopf.LogFormat.FULL)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    install_redaction()
    kopf.run(
        clusterwide=True,
        liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz",
    )


if __name__ == "__main__":
    main()
