# Multi-stage: build the wheel and its dependencies in one stage, run as a non-root user in the next.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
RUN /opt/gateway/bin/pip install --no-cache-dir .

FROM python:3.11-slim
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GATEWAY_WORKERS=2
RUN groupadd --system --gid 10001 gateway && useradd --system --uid 10001 --gid gateway --home-dir /app gateway
WORKDIR /app
COPY --from=build /opt/gateway /opt/gateway
COPY config ./config
RUN mkdir -p /app/var && chown 10001:10001 /app/var
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=2).status == 200 else 1)"]
# GATEWAY_DATABASE_URL comes from the environment; workers from GATEWAY_WORKERS.
ENTRYPOINT ["sh", "-c", "exec python -m gateway serve --host 0.0.0.0 --port 8080 --workers \"${GATEWAY_WORKERS}\" --reference-dir /app/config/demo"]
