# Two commands on a fresh clone: `make serve` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ../shared/data
HOST ?= 127.0.0.1
PORT ?= 8000
# torch is pinned to the release that ships for this machine; pip's CPU wheel index is used in Docker.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: serve test lint format train-mnist train-cifar10 train-seeds evaluate bench bench-galleries soak docker-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamp files: reinstall only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e .
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

train-mnist: $(VENV)/.installed-dev
	$(BIN)/python -m training.train --dataset mnist --data-dir $(DATA_DIR) --out model_store/mnist

train-cifar10: $(VENV)/.installed-dev
	$(BIN)/python -m training.train --dataset cifar10 --data-dir $(DATA_DIR) --out model_store/cifar10

train-seeds: $(VENV)/.installed-dev  ## the classic Siamese recipes, for the README comparison
	$(BIN)/python -m training.train --preset seed-mnist --data-dir $(DATA_DIR) --out runs/seed-mnist/model
	$(BIN)/python -m training.train --preset seed-cifar --data-dir $(DATA_DIR) --out runs/seed-cifar/model

evaluate: $(VENV)/.installed-dev
	$(BIN)/python -m training.evaluate model_store/mnist --data-dir $(DATA_DIR)
	$(BIN)/python -m training.evaluate model_store/cifar10 --data-dir $(DATA_DIR)

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
