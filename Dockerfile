# audit-otlp as a container (sidecar next to the agent that writes audit.jsonl).
#   docker build -t audit-otlp .
#   docker run --read-only -v agent-audit:/audit:ro -v audit-otlp-state:/var/lib/audit-otlp \
#     -e OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 audit-otlp
# Any Debian-like image with python3 >= 3.11 and its venv module works as the base.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
# Extra pip arguments, for example a local wheelhouse on machines without the package index.
ARG PIP_INSTALL_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY . /src
# A venv under /opt works the same on python:*-slim and on Debian's own python3.
RUN python3 -m venv /opt/audit-otlp \
 && cd /src && /opt/audit-otlp/bin/pip install ${PIP_INSTALL_ARGS} . \
 && /opt/audit-otlp/bin/audit-otlp --version

FROM ${BASE_IMAGE}
COPY --from=build /opt/audit-otlp /opt/audit-otlp
# A fixed numeric user (Kubernetes runAsNonRoot can check it) that owns only the state volume.
RUN mkdir -p /var/lib/audit-otlp /audit \
 && chown 10001:10001 /var/lib/audit-otlp && chmod 0700 /var/lib/audit-otlp
ENV PATH=/opt/audit-otlp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AUDIT_OTLP_FILE=/audit/audit.jsonl \
    AUDIT_OTLP_CHECKPOINT=/var/lib/audit-otlp/checkpoint.json \
    AUDIT_OTLP_LOG_FORMAT=json \
    AUDIT_OTLP_HEALTH_LISTEN=0.0.0.0:9464
# The checkpoint and dead-letter file; everything else may be read-only (docker run --read-only).
VOLUME ["/var/lib/audit-otlp"]
WORKDIR /var/lib/audit-otlp
USER 10001:10001
EXPOSE 9464
# `audit-otlp health` asks /healthz on AUDIT_OTLP_HEALTH_LISTEN: is the event loop alive?
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 CMD ["audit-otlp", "health"]
# SIGTERM: stop reading, finish in-flight requests within 5 s, write the checkpoint, exit 0
# (inside docker's default 10 s stop timeout).
STOPSIGNAL SIGTERM
ENTRYPOINT ["audit-otlp"]
CMD ["run"]
