# One image for NuMail's three processes; the chart picks the entry point with `args`:
#   python -m numail_operator              the Kopf operator (the default command)
#   python -m numail_operator.keyservice   the key service
#   python -m numail_operator.tls          the key service's self-signed certificate (init container)
#   python -m numail_workers.send          a workspace's send worker
#   python -m numail_workers.reply         a workspace's reply detector
#
# Runs as UID/GID 65532 with a read-only root filesystem: nothing writes outside /tmp (the
# chart mounts an emptyDir there) and no bytecode is written at run time.
#
# The base is pinned by tag here; CI resolves the tag to its digest and builds with
# --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> (see README, Image).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Every dependency ships manylinux wheels, so no compiler is needed.
RUN python -m venv /opt/numail
COPY pyproject.toml README.md ./
COPY numail ./numail
COPY operator ./operator
COPY workers ./workers
RUN /opt/numail/bin/pip install --no-cache-dir --only-binary=:all: --no-binary=numail-operator . \
    && /opt/numail/bin/python -m compileall -q /opt/numail/lib \
    && /opt/numail/bin/python -c "import numail_operator.keyservice, numail_operator.tls, numail_workers"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="numail-operator" \
      org.opencontainers.image.description="NuMail operator, key service and workers" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/numail/numail-operator"
ENV PATH=/opt/numail/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/numail /opt/numail
WORKDIR /tmp
USER 65532:65532
EXPOSE 8080 8443 9090
CMD ["python", "-m", "numail_operator"]
