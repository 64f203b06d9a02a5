# IronCart: `make run` serves the shop, `make test` proves it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint unit integration e2e lock clean bench

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## Serve the whole shop on http://$${IRONCART_HOST:-127.0.0.1}:$${IRONCART_PORT:-8000} (SQLite, demo data),
## with the sandbox payment provider (a separate process on 127.0.0.1:8790) for checkout.
run: install
	$(BIN)/ironcart migrate
	$(BIN)/ironcart seed
	@mkdir -p var; \
	$(BIN)/ironcart sandbox-psp --store var/sandbox-psp.db \
	  --webhook-url http://$${IRONCART_HOST:-127.0.0.1}:$${IRONCART_PORT:-8000}/api/v1/payments/webhooks/sandbox & \
	psp=$$!; trap 'kill $$psp 2>/dev/null; wait $$psp 2>/dev/null' EXIT INT TERM; \
	$(BIN)/ironcart serve

## Lint, type-check, import contracts, then every test tier.
test: install lint
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: install
	$(BIN)/python -m pytest tests/unit

integration: install
	$(BIN)/python -m pytest tests/integration

e2e: install
	$(BIN)/python -m pytest tests/e2e

## Re-resolve and pin every dependency (needs network access to PyPI).
lock: install
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes -o requirements.lock

## wrk against nginx, a raw ASGI app and IronCart (production mode, PostgreSQL, Redis) -> docs/benchmarks.md.
## Quick smoke: BENCH_DURATION=2 BENCH_REPEATS=1 make bench. Knobs: see bench/run.py.
bench: install
	bash bench/install.sh && $(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
