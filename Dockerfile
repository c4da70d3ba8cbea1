# The Phoenix ranking service on its embedded default model (CPU).
#   docker build -t phoenix-ranker .
#   docker run -p 50051:50051 -p 9090:9090 phoenix-ranker
# Serve another checkpoint: mount it and set PHOENIX_CHECKPOINT=/models/x.safetensors.
# For GPUs, build FROM an image with CUDA and install jax[cuda12] instead of jax.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY model ./model
COPY request ./request
COPY server ./server
COPY training ./training
RUN pip install . && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /home/phoenix --create-home phoenix \
    && mkdir -p /var/cache/phoenix && chown phoenix /var/cache/phoenix
USER phoenix
WORKDIR /home/phoenix

# Every `serve` flag has a PHOENIX_* twin; these are the container's defaults.
ENV PHOENIX_HOST="[::]" \
    PHOENIX_PORT=50051 \
    PHOENIX_METRICS_PORT=9090 \
    PHOENIX_GRACE_SECONDS=10 \
    PHOENIX_LOG_JSON=1 \
    PHOENIX_COMPILATION_CACHE=/var/cache/phoenix

EXPOSE 50051 9090
# SIGTERM drains queued and in-flight requests within PHOENIX_GRACE_SECONDS, then exits 0.
STOPSIGNAL SIGTERM
# Warm-up compiles every batch shape before health reports SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["phoenix-ranker", "health", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["phoenix-ranker", "serve"]
