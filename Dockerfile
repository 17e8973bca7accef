# syntax=docker/dockerfile:1.7
# Kenning: one image for the operator, the CloudEvents sink and the workers.
#
#   docker build -t kenning:0.1.0 .
#   docker run --rm -p 8080:8080 kenning:0.1.0                    # the sink, on SQLite in /app
#   docker run --rm kenning:0.1.0 worker --module myflows.payment  # a worker (needs the code)
#
# A workflow image is `FROM kenning:<version>` plus the user's module (docs/image.md).
# Pin the base by digest in release builds:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# -- build: a wheel of this repository (sdk/ and operator/) ----------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdk/ sdk/
COPY operator/ operator/
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

# -- runtime: the wheel and its dependencies in a venv; no compiler, no build cache ----------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kenning" \
      org.opencontainers.image.description="Durable async workflows for Python, native to Kubernetes: operator, CloudEvents sink and worker entry points" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

ENV VIRTUAL_ENV=/opt/kenning \
    PATH=/opt/kenning/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    KENNING_HOST=0.0.0.0 \
    PORT=8080

# The wheel is bind-mounted from the build stage, so it leaves no layer behind.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv "$VIRTUAL_ENV" \
    && wheel="$(find /wheels -name 'kenning-*.whl' -print -quit)" \
    && "$VIRTUAL_ENV/bin/pip" install --no-cache-dir "${wheel}[postgres,operator]" \
    && groupadd --system --gid 10001 kenning \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /app --no-create-home \
         --shell /usr/sbin/nologin kenning \
    && mkdir -p /app \
    && chown 10001:10001 /app

WORKDIR /app
USER 10001:10001

# sink: $PORT (/healthz, /readyz, /metrics); operator: its --probe-port (/healthz, /readyz,
# /metrics). Kubernetes probes are set by the Helm chart; workers serve no HTTP.
EXPOSE 8080
ENTRYPOINT ["kenning"]
CMD ["sink"]
