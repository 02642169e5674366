# imgsim serving image (default target) and training image (target `train`).
#
#   docker build -t imgsim .
#   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp imgsim
#   docker build --target train -t imgsim-train .     # or: docker compose --profile train ...
#
# Two build arguments, and nothing else, differ between a user's build and this project's own
# (`make docker-check`, on a machine without a container registry or PyTorch's index):
#   PYTHON_IMAGE     the base image: python:3.11-slim, or a local stand-in with Python 3.11
#   TORCH_INDEX_URL  PyTorch's CPU wheel index; empty = pip's default index, whose Linux torch
#                    wheel brings ~4 GB of CUDA libraries (image sizes in docs/deployment.md)
#
# The serving image holds the installed `app` package, torch and the models in model_store/; no
# training code, tests or data. It writes nothing at run time except the service's state under
# IMGSIM_DATA_DIR (a volume), bytecode is compiled by pip at build time and HOME and TMPDIR live
# in /tmp, so a read-only root file system with a tmpfs on /tmp works.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
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


FROM base AS torch
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The index is passed to these pip commands only: the service's other dependencies come from
# pip's default index either way.
# DL3013: torch is pinned; hadolint takes the optional `--index-url URL` for a package name.
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.14.1


FROM torch AS train
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /srv
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
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


# On top of the torch stage, as `train` is: the two images share its layers (~4 GB with the
# default index), and a change to app/ rebuilds one small layer instead of copying the whole
# virtualenv out of a builder stage again.
FROM torch AS runtime
COPY pyproject.toml README.md /build/
COPY app/ /build/app/
# torch is already satisfied, so this adds only the service's own dependencies and `app`, with
# the serving extras: faiss for large galleries, psycopg for IMGSIM_GALLERY_URL=postgresql://...
# (the compose `postgres` profile, the Kubernetes Secret's gallery-url), onnxruntime for the
# shipped models' model.onnx (IMGSIM_INFERENCE_ENGINE=auto picks the faster engine).
RUN pip install --no-cache-dir "/build[faiss,postgres,onnx]" \
    && rm -rf /build
COPY model_store/ /srv/model_store/
# The state directory belongs to the service's user: a named volume mounted here starts as a
# copy of it, owner included, so the service can write its profiles and galleries there.
RUN install -d -o 10001 -g 10001 /srv/data
WORKDIR /srv
# python -m app and python -m app.healthcheck both read IMGSIM_HOST and IMGSIM_PORT, so
# `-e IMGSIM_PORT=9000` moves the server and its health check together.
ENV IMGSIM_MODEL_STORE=/srv/model_store \
    IMGSIM_DATA_DIR=/srv/data \
    IMGSIM_HOST=0.0.0.0 \
    IMGSIM_PORT=8000
USER 10001:10001
EXPOSE 8000
# Boot loads and warms up every model before the port opens, hence the start period: a few
# seconds on an idle machine, 70 s for two containers booting at once on a loaded 2-core one.
# (No --start-interval: the classic builder, the one without buildx, rejects it.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "app.healthcheck"]
CMD ["python", "-m", "app"]
