# imagenet-cls: every target that needs Python depends on the idempotent install step.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= config/resnet.yaml
DATA   ?=
CKPT   ?=
INPUT  ?=
SRC    ?=
DEST   ?=
ARGS   ?=
SCALE  ?= 0.01,0.1,1

.DEFAULT_GOAL := help
.PHONY: help install demo train evaluate predict serve dataset test test-slow test-all lint format bench browser scale docs docs-serve clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with the pinned dependencies (a second run does nothing)

demo: $(STAMP) ## fit -> test -> predict on the embedded digits (CPU, ~2 min)
	$(PY) -m imagenet_cls.demo run

train: $(STAMP) ## fit: make train CONFIG=config/resnet.yaml DATA=/data/imagenet
	$(PY) cli.py fit --config $(CONFIG) $(if $(DATA),--data.data_dir $(DATA)) $(ARGS)

evaluate: $(STAMP) ## test a checkpoint: make evaluate CKPT=best.ckpt DATA=/data/imagenet
	$(PY) cli.py test --ckpt_path $(CKPT) --data.data_dir $(DATA) $(ARGS)

predict: $(STAMP) ## annotate images: make predict CKPT=best.ckpt INPUT=folder|file|glob|list.txt
	$(PY) cli.py predict --ckpt_path $(CKPT) --data.mode predict --data.predict_path '$(INPUT)' $(ARGS)

serve: $(STAMP) ## serve a model over HTTP: make serve CKPT=best (or ARGS="--export DIR"); see cli.py serve --help
	$(PY) cli.py serve $(if $(CKPT),--ckpt_path $(CKPT)) $(ARGS)

dataset: $(STAMP) ## prepare a download without touching it: make dataset SRC=~/Downloads/imagenet DEST=dataset/imagenet
	$(PY) -m imagenet_cls.prepare $(SRC) $(DEST) $(ARGS)

test: $(STAMP) ## the test suite (slow tests excluded; see test-all)
	$(PY) -m pytest -m "not slow and not gpu" -q --durations=30

test-slow: $(STAMP) ## only the slow tests: real sample images (skip without ../shared/data/imagenet-sample), SIGINT, demo
	$(PY) -m pytest -m "slow and not gpu" -q --durations=30

test-all: $(STAMP) ## every test, slow ones included
	$(PY) -m pytest -m "not gpu" -q

lint: $(STAMP) ## ruff check and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP) ## ruff fix and format
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(STAMP) ## benchmarks against baselines measured in the same run; writes bench/results.json
	$(PY) -m bench.run

browser: ## install Debian's chromium for the page's headless test (tests/test_serve.py, slow); needs root
	apt-get update && apt-get install -y chromium

scale: $(STAMP) ## ImageNet's size simulated in /tmp (tiny JPEGs, hard links); writes bench/scale.json: make scale SCALE=0.01
	$(PY) -m bench.scale --scale $(SCALE)

docs: $(STAMP) ## build the documentation site into site/ (MkDocs, strict: a broken link or page fails)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(STAMP) ## serve the documentation on 127.0.0.1:8000, rebuilt on every change
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --dev-addr 127.0.0.1:8000

clean: ## remove run outputs and caches (keeps .venv and dataset/)
	rm -rf runs wandb lightning_logs site .pytest_cache .ruff_cache bench/results.json bench/_work
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
