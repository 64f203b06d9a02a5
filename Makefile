# IronCart: `make run` serves the shop, `make test` proves it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test test-http test-processes lint unit integration e2e chaos lock clean bench

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## Serve the whole shop on http://$${IRONCART_HOST:-127.0.0.1}:$${IRONCART_PORT:-8000} (SQLite, demo data),
## with the sandbox payment provider (a separate process on 127.0.0.1:8790) for checkout and
## the sandbox carrier (127.0.0.1:8791) for shipments and their tracking webhooks.
run: install
	$(BIN)/ironcart migrate
	$(BIN)/ironcart seed
	@mkdir -p var; \
	shop=http://$${IRONCART_HOST:-127.0.0.1}:$${IRONCART_PORT:-8000}; \
	$(BIN)/ironcart sandbox-psp --store var/sandbox-psp.db \
	  --webhook-url $$shop/api/v1/payments/webhooks/sandbox & \
	psp=$$!; \
	$(BIN)/ironcart sandbox-carrier --store var/sandbox-carrier.db \
	  --webhook-url $$shop/api/v1/shipping/webhooks/sandbox & \
	carrier=$$!; \
	trap 'kill $$psp $$carrier 2>/dev/null; wait $$psp $$carrier 2>/dev/null' EXIT INT TERM; \
	$(BIN)/ironcart serve

## Lint, type-check, import contracts, then every test tier, in TEST_WORKERS processes
## (pytest-xdist: much of a test's time is spent waiting on servers and subprocesses).
TEST_WORKERS ?= 3
test: install lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: install
	$(BIN)/python -m pytest tests/unit

integration: install
	$(BIN)/python -m pytest tests/integration

## The integration suite with every context as its own app over loopback HTTP
## (tests/support/http_wiring.py): the app under test reaches the others through their ports.
test-http: install
	IRONCART_TEST_WIRING=http $(BIN)/python -m pytest tests/integration -n $(TEST_WORKERS) --dist worksteal

## The integration suite again with every context as its own OS process (forked children of
## tests/support/fork_server.py) over loopback HTTP; the app under test calls them.
test-processes: install
	IRONCART_TEST_WIRING=processes $(BIN)/python -m pytest tests/integration -n $(TEST_WORKERS) --dist worksteal

e2e: install
	$(BIN)/python -m pytest tests/e2e

## Fault-injection tests (marker `chaos`) with the long fault windows of the acceptance
## criteria (a 30 s PSP freeze) and their strict latency bounds; best on a quiet machine.
chaos: install
	IRONCART_CHAOS_FREEZE_SECONDS=30 IRONCART_CHAOS_STRICT=1 $(BIN)/python -m pytest -m chaos

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
