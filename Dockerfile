# syntax=docker/dockerfile:1
# pos-coupon-gateway: a slim runtime holding the gateway's wheel and its dependencies' wheels, and nothing else
# (no compiler, no build backend, no pip, no tests). Build with BuildKit (Docker's default builder since 23.0):
#   docker build -t pos-coupon-gateway:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: wheels for the dependencies, then the project's own wheel ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The dependencies are the lock's exact versions (requirements.lock, compiled from pyproject.toml by .ci/lock): every
# build of one commit holds the same packages, and their wheels stay cached until the lock changes.
COPY requirements.lock ./
RUN pip wheel --no-cache-dir --wheel-dir /wheels/deps -r requirements.lock
# service/openapi.yaml is a symlink to ../openapi.yaml (package data): copy both, so the wheel holds the real file.
COPY pyproject.toml README.md openapi.yaml ./
COPY service/ service/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels/app .

# ---- runtime ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="pos-coupon-gateway" \
      org.opencontainers.image.description="Validate and redeem Capillary CRM coupons from store tills"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    LOG_FORMAT=json
# A numeric user: Kubernetes' runAsNonRoot can only verify a numeric uid.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gateway
# The dependencies in a layer of their own (bind-mounted wheels: nothing of them stays in the image but the install);
# setuptools and wheel are build tools the runtime never uses.
RUN --mount=type=bind,from=build,source=/wheels/deps,target=/wheels/deps \
    pip install --no-cache-dir --no-index /wheels/deps/*.whl \
 && pip uninstall --yes setuptools wheel
# The project, resolved against the wheels above only (--no-index); then pip itself goes.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels/deps /wheels/app/*.whl \
 && python -m pip uninstall --yes pip \
 && coupon-gateway --version
USER 10001:10001
EXPOSE 8080
# No curl in slim images: python asks /healthz (liveness: it touches no dependency).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + (os.environ.get('GATEWAY_PORT') or '8080') + '/healthz', timeout=3)"]
ENTRYPOINT ["coupon-gateway"]
CMD ["serve"]
