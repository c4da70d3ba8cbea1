# The Phoenix ranking service on its embedded default model.
#
#   podman build --format docker -t phoenix-ranker .          (or docker build)
#   podman run -p 50051:50051 -p 9464:9464 -v phoenix-cache:/var/cache/phoenix phoenix-ranker
#
# Build arguments:
#   BASE     a Debian bookworm image with python3 (3.11) and pip. Default: the official
#            python image. Where no registry is reachable, deploy/container-test.sh makes one
#            from Debian's packages (debootstrap) and passes it here.
#   FLAVOR   cpu (default) or cuda: which pinned requirements are installed
#            (deploy/requirements-FLAVOR.txt; cuda adds jax's CUDA 12 plugin and libraries).
#
# Every `serve` flag has a PHOENIX_* environment twin (README: Serving options); the ENV below
# are this image's defaults. Serve another model: mount it and set PHOENIX_CHECKPOINT, or mount
# a directory of versions at PHOENIX_CHECKPOINT_DIR (reloaded without downtime).
ARG BASE=docker.io/library/python:3.11-slim-bookworm

# -- stage 1: the project as a wheel --------------------------------------------------------
FROM ${BASE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY model ./model
COPY request ./request
COPY server ./server
COPY training ./training
COPY phoenix_ranker ./phoenix_ranker
RUN python3 -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . 2>/dev/null \
    || python3 -m pip wheel --no-deps --wheel-dir /wheels .

# -- stage 2: the runtime ---------------------------------------------------------------------
FROM ${BASE} AS runtime
ARG FLAVOR=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_ROOT_USER_ACTION=ignore PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Pinned dependencies first: this layer is reused as long as the pins do not change.
COPY deploy/requirements-cpu.txt deploy/requirements-cuda.txt /tmp/requirements/
RUN python3 -m pip install --no-compile -r /tmp/requirements/requirements-${FLAVOR}.txt \
    && rm -rf /tmp/requirements
COPY --from=wheel /wheels /tmp/wheels
RUN python3 -m pip install --no-compile --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels \
    && useradd --uid 10001 --user-group --home-dir /home/phoenix --create-home \
        --shell /usr/sbin/nologin phoenix \
    && mkdir -p /var/cache/phoenix && chown phoenix:phoenix /var/cache/phoenix

USER 10001:10001
WORKDIR /home/phoenix
ENV PHOENIX_HOST="[::]" \
    PHOENIX_PORT=50051 \
    PHOENIX_METRICS_HOST=0.0.0.0 \
    PHOENIX_METRICS_PORT=9464 \
    PHOENIX_GRACE_SECONDS=10 \
    PHOENIX_LOG_JSON=1 \
    PHOENIX_COMPILATION_CACHE=/var/cache/phoenix
# Compiled executables persist here: a container that keeps this volume warms up from it.
VOLUME ["/var/cache/phoenix"]
EXPOSE 50051 9464
# SIGTERM drains queued and in-flight requests within PHOENIX_GRACE_SECONDS, then exits 0.
STOPSIGNAL SIGTERM
# Health is NOT_SERVING until warm-up has compiled the shapes that hold any request (seconds;
# the rest compile while serving). The start period leaves room for a slow, busy host.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["phoenix-ranker", "health", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["phoenix-ranker", "serve"]
