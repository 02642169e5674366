# Two commands on a fresh clone: `make serve` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ../shared/data
HOST ?= 127.0.0.1
PORT ?= 8000
# torch is pinned to the release that ships for this machine; pip's CPU wheel index is used in Docker.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: serve test lint format train train-mnist train-cifar10 train-fashion-mnist train-seeds evaluate onnx bench bench-galleries soak docker-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamp files: reinstall only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-train: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[train]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

serve: $(VENV)/.installed  ## serve every model in model_store/ on http://127.0.0.1:8000
	$(BIN)/python -m app --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint  ## lint + the whole test suite (tests needing ../shared/data skip when it is absent)
	IMGSIM_DATASETS=$(DATA_DIR) $(BIN)/python -m pytest

# Train on your own images: DATASET=folder:/path/to/classes (one sub-folder per class) NAME=x;
# the model goes to model_store/$(NAME) (never over an existing one without ARGS=--overwrite).
DATASET ?=
NAME ?=
ARGS ?=
train: $(VENV)/.installed-train  ## make train DATASET=folder:/path NAME=x [ARGS="--channels 1 ..."]
	@test -n "$(DATASET)" || { echo "usage: make train DATASET=folder:/path/to/classes NAME=name [ARGS=...]"; exit 2; }
	$(BIN)/python -m training.train --dataset $(DATASET) --data-dir $(DATA_DIR) $(if $(NAME),--name $(NAME)) $(ARGS)

# The shipped recipes, exactly (their presets), into runs/<name>: never over model_store/.
train-mnist: $(VENV)/.installed-train
	$(BIN)/python -m training.train --preset mnist --data-dir $(DATA_DIR) --out runs/mnist $(ARGS)

train-cifar10: $(VENV)/.installed-train
	$(BIN)/python -m training.train --preset cifar10 --data-dir $(DATA_DIR) --out runs/cifar10 $(ARGS)

train-fashion-mnist: $(VENV)/.installed-train
	$(BIN)/python -m training.train --preset fashion-mnist --data-dir $(DATA_DIR) --out runs/fashion-mnist $(ARGS)

train-seeds: $(VENV)/.installed-train  ## the classic Siamese recipes, for docs/models.md
	$(BIN)/python -m training.train --preset seed-mnist --data-dir $(DATA_DIR) --out runs/seed-mnist/model $(ARGS)
	$(BIN)/python -m training.train --preset seed-cifar --data-dir $(DATA_DIR) --out runs/seed-cifar/model $(ARGS)
	$(BIN)/python -m training.train --preset seed-fashion --data-dir $(DATA_DIR) --out runs/seed-fashion/model $(ARGS)

evaluate: $(VENV)/.installed-train
	$(BIN)/python -m training.evaluate model_store/mnist --data-dir $(DATA_DIR)
	$(BIN)/python -m training.evaluate model_store/cifar10 --data-dir $(DATA_DIR)
	$(BIN)/python -m training.evaluate model_store/fashion-mnist --data-dir $(DATA_DIR)

onnx: $(VENV)/.installed-dev  ## add model.onnx (+ model.int8.onnx where it holds accuracy) to the shipped models
	for m in mnist fashion-mnist cifar10; do \
		$(BIN)/python -m training.export_onnx model_store/$$m --data-dir $(DATA_DIR) --int8 && \
		$(BIN)/python -m training.evaluate model_store/$$m --data-dir $(DATA_DIR) --engine onnx --record \
		|| exit 1; \
	done

bench: $(VENV)/.installed-dev  ## speed/memory goals (issue 5); writes benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks.run --data-dir $(DATA_DIR)

bench-galleries: $(VENV)/.installed-dev  ## gallery search at 10k/100k/1M: exact, faiss, pgvector
	$(BIN)/python -m benchmarks.galleries

soak: $(VENV)/.installed-dev  ## 20,000 mixed valid/hostile requests against a real uvicorn
	$(BIN)/python -m benchmarks.soak --data-dir $(DATA_DIR)

# Builds both images and runs them for real: health, /verify, non-root, --cpus 1, a tiny training
# run served by the runtime image (deploy/docker_check.py; times and sizes in docs/deployment.md).
docker-check: $(VENV)/.installed-dev  ## needs Docker (or ../shared/tools/docker-local.sh)
	$(BIN)/python deploy/docker_check.py $(DOCKER_CHECK_FLAGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
