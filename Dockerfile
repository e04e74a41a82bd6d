# Build stage: the package and its pinned dependencies go into a venv the runtime copies whole,
# so the runtime image carries no build tools.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/gateway
COPY pyproject.toml ./
COPY gateway ./gateway
COPY adapters ./adapters
RUN /opt/gateway/bin/pip install --no-cache-dir .

FROM python:3.11-slim
# TZ: the gateway dates settlements, days and date checks in its local time, and the national
# interface's times are Beijing time; CST-8 needs no zone files in the slim image.
ENV PATH=/opt/gateway/bin:$PATH \
    TZ=CST-8 \
    PYTHONUNBUFFERED=1
# A numeric user, so orchestrators can verify runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app gateway
WORKDIR /app
COPY --from=build /opt/gateway /opt/gateway
# config/ lives beside the package in the repository, not inside it: paths are given explicitly.
COPY config ./config
# var/ holds the embedded PostgreSQL when GATEWAY_DATABASE_URL is not set.
RUN mkdir -p /app/var && chown 10001:10001 /app/var
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=2)"]
# sh -c for ${GATEWAY_WORKERS:-2}; exec so the gateway is PID 1 and gets SIGTERM. The CLI reads
# GATEWAY_DATABASE_URL and GATEWAY_REDIS_URL itself; arguments to `docker run` are appended.
ENTRYPOINT ["sh", "-c", "exec python -m gateway serve --host 0.0.0.0 --port 8080 --workers \"${GATEWAY_WORKERS:-2}\" --reference-dir /app/config/demo --config /app/config/gateway.toml \"$@\"", "gateway"]
