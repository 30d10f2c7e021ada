# syntax=docker/dockerfile:1
# The paystream image: one image for workers and the CLI (topics, migrate, tenants, dlq).
# docker build -t registry.example/paystream:"$(git rev-parse --short HEAD)" .
# (a tag of its own per build: the chart requires image.tag or image.digest)

FROM python:3.11-slim-bookworm AS build
# Wheels only: every dependency ships manylinux wheels (rocksdict bundles RocksDB), so
# the image needs no compiler, and a dependency that would build from source fails here.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ONLY_BINARY=:all:
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY paystream ./paystream
# paystream's own wheel, built in a throwaway venv: the build tools stay out of the image.
RUN python -m venv /tmp/build \
    && /tmp/build/bin/pip wheel --no-deps --wheel-dir /tmp/wheels .
# The [otel] extra: tracing can be turned on with PAYSTREAM_OTEL_EXPORTER alone. Every
# dependency at the version constraints.txt pins (scripts/lock): a rebuild for a hotfix
# installs what was tested, not whatever was released since.
RUN python -m venv --without-pip /opt/paystream \
    && /tmp/build/bin/pip --python /opt/paystream/bin/python install -c constraints.txt \
       "$(ls /tmp/wheels/paystream-*.whl)[otel]"

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/paystream --create-home paystream
COPY --from=build /opt/paystream /opt/paystream
# Container defaults: bind every interface (the platform publishes the port), no
# `_created` series beside each counter (half the series, nothing reads them), RocksDB
# table stores under the data dir (restarts read the changelogs from where they were).
ENV PATH=/opt/paystream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PROMETHEUS_DISABLE_CREATED_SERIES=True \
    PAYSTREAM_DATA_DIR=/var/lib/paystream \
    PAYSTREAM_WEB_HOST=0.0.0.0 \
    PAYSTREAM_TABLE_STORE=rocksdb://
USER 10001:10001
WORKDIR /var/lib/paystream
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PAYSTREAM_WEB_PORT', '6066'), timeout=2)"]
# SIGTERM: the worker hands its batches over and commits before it leaves the group.
STOPSIGNAL SIGTERM
ENTRYPOINT ["paystream"]
CMD ["worker"]
