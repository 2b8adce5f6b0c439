# syntax=docker/dockerfile:1
# One image for every Python process of the deployment:
#   worker            kafka-dagster worker                      (the default command)
#   code location     dagster code-server start -m dagster_project.definitions -h 0.0.0.0 -p 4000
#   webserver         dagster-webserver -h 0.0.0.0 -p 3000 -w /opt/dagster/home/workspace.yaml
#   daemon            dagster-daemon run -w /opt/dagster/home/workspace.yaml
# See docker-compose.yml and docs/deploy.md.

# The base image is pinned by tag, not by digest: no Docker engine or registry client is at hand
# where this file is written and tested, so a digest could not be read or checked, and a wrong one
# breaks every build. To pin it, read the digest where Docker runs and append it to both FROM lines:
#   docker buildx imagetools inspect python:3.11.11-slim-bookworm   # the index digest
#   FROM python:3.11.11-slim-bookworm@sha256:<digest> AS build
# (docs/deploy.md, "The image").

# ---- build: a virtualenv with the locked dependencies, then the project ----
FROM python:3.11.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, from the locks alone (hashes checked), so that a change to the sources
# reuses this layer. dagster.lock is the runtime lock plus the `dagster` extra: the image runs the
# worker and the Dagster processes alike. pip.lock brings the pip the hashed lock needs.
COPY requirements/pip.lock requirements/dagster.lock ./requirements/
RUN pip install --require-hashes -r requirements/pip.lock \
 && pip install --require-hashes -r requirements/dagster.lock

# Then the project itself, with no dependency of its own to resolve (setuptools is in the lock).
# README.md (the wheel's long description) is left out on purpose: the image runs the code, it
# does not publish it.
COPY pyproject.toml LICENSE ./
COPY service ./service
COPY dagster_project ./dagster_project
RUN pip install --no-deps --no-build-isolation . \
 && pip check

# ---- runtime: the virtualenv, the routes, a non-root user; no compilers, no sources ----
FROM python:3.11.11-slim-bookworm AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/home \
    DAGSTER_DISABLE_TELEMETRY=1 \
    KAFKA_DAGSTER_ROUTES=/app/routes.toml \
    KAFKA_DAGSTER_WEB_HOST=0.0.0.0 \
    KAFKA_DAGSTER_WEB_PORT=6066

RUN groupadd --system --gid 10001 kafka-dagster \
 && useradd --system --uid 10001 --gid kafka-dagster --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin kafka-dagster \
 && mkdir -p /app /opt/dagster/home/storage \
 && chown -R 10001:10001 /app /opt/dagster/home

COPY --from=build /opt/venv /opt/venv

# Faust's data directory goes under KAFKA_DAGSTER_DATA_DIR (default: /tmp/kafka-dagster-<uid>), not /app.
WORKDIR /app
COPY routes.toml ./
COPY schemas ./schemas

USER 10001:10001

EXPOSE 6066 4000 3000

# The worker's liveness page. The compose file overrides this check for the Dagster
# processes that share the image (code server, webserver, daemon).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('KAFKA_DAGSTER_WEB_PORT') or '6066'), timeout=4)"]

CMD ["kafka-dagster", "worker"]
