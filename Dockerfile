# syntax=docker/dockerfile:1.7
# One image, two commands (the Kubernetes manifests in deploy/ pick one each):
#   rollout-analyzer serve                    webhook for Argo Rollouts, port 8080
#   rollout-analyzer worker --concurrency N   Celery worker
# Build:  docker build -t REGISTRY/rollout-analyzer:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Optional extras, e.g. --build-arg EXTRAS='[otlp-grpc]' for the OTLP gRPC trace exporter.
ARG EXTRAS=""

# --- build: the project and all its dependencies as wheels -----------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Every dependency publishes binary wheels for amd64 and arm64: no compiler, even here.
COPY . .
# constraints.txt: the versions the test suite passed on (`make lock`).
RUN pip wheel --wheel-dir /wheels -c constraints.txt ".${EXTRAS}"

# --- runtime: the wheels installed into a clean interpreter, run as an unprivileged user -----
FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRAS
# The root filesystem is read-only in the cluster: nothing may write .pyc files at run time
# (pip compiles them at install) and anything wanting a home gets the /tmp emptyDir.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 rollout-analyzer \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin rollout-analyzer
# The wheels are bind-mounted, not copied: they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "rollout-analyzer${EXTRAS}"
# Numeric, so that the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["rollout-analyzer"]
CMD ["serve"]
