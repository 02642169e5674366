# imgsim serving image (default target) and training image (target `train`).
#
#   docker build -t imgsim .
#   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp imgsim
#   docker build --target train -t imgsim-train .     # or: docker compose --profile train ...
#
# The serving image holds the installed `app` package, CPU-only torch and the models in
# model_store/; no training code, tests or data. It writes nothing at run time (bytecode is
# compiled by pip at build time; HOME and TMPDIR live in /tmp), so a read-only root file system
# with a tmpfs on /tmp works.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp
# A fixed numeric uid, so `runAsNonRoot` style checks can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 imgsim \
    && useradd --system --uid 10001 --gid imgsim --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin imgsim


# CPU wheels from PyTorch's own index: the PyPI torch wheel pulls in ~2 GB of CUDA libraries.
FROM base AS torch
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.14.1


FROM torch AS builder
WORKDIR /build
COPY pyproject.toml README.md ./
COPY app/ app/
# torch is already satisfied, so this adds only the service's own dependencies and `app`.
RUN pip install --no-cache-dir .


FROM torch AS train
WORKDIR /srv
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY app/ app/
COPY training/ training/
# Installed for its dependencies; `python -m training.train` runs the sources in /srv.
# DL3013: the versions are the local project's, declared in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[train]" \
    && rm -rf build imgsim.egg-info
USER 10001:10001
CMD ["python", "-m", "training.train", "--help"]


FROM base AS runtime
COPY --from=builder /opt/venv /opt/venv
COPY model_store/ /srv/model_store/
# The state directory (threshold profiles) is the one place the service writes: a volume in
# docker-compose; created here owned by the service user, so a fresh named volume inherits that.
RUN mkdir /srv/data && chown 10001:10001 /srv/data
WORKDIR /srv
ENV IMGSIM_MODEL_STORE=/srv/model_store \
    IMGSIM_DATA_DIR=/srv/data
USER 10001:10001
EXPOSE 8000
# Boot loads every model before the port opens, hence the start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]
