# Everything a fresh machine needs is installed by these targets; nothing by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the Docker tests and the demo use: debootstrap builds the local Python
# base image where no image can be pulled; docker-registry serves image-push tests.
SYSTEM_PACKAGES ?= debootstrap docker-registry
# Wanted, not required: chromium and chromium-driver run the dashboard's browser tests,
# prometheus the tests of rollouts judged from a Prometheus server (its binary, run by the
# tests on a free port); they skip without them (a failed download never fails the setup).
OPTIONAL_PACKAGES ?= chromium chromium-driver prometheus
# Services Debian starts when their package is installed (where systemd runs; in a
# container policy-rc.d forbids it): the tests start their own server on a free port, so
# those that this target installed (never one there before) are stopped and disabled.
STOPPED_SERVICES := prometheus prometheus-node-exporter

.PHONY: setup system-deps test lint unit integration demo bench clean

$(BIN)/reconcile: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Installs missing Debian packages when this runs as root with apt; otherwise says what
# is missing (the tests that need them skip with a message).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	optional=""; for p in $(OPTIONAL_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || optional="$$optional $$p"; done; \
	if [ -n "$$missing$$optional" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq; \
	    if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; fi; \
	    if [ -n "$$optional" ]; then echo "installing:$$optional"; \
	      fresh=""; for s in $(STOPPED_SERVICES); do \
	        dpkg -s $$s >/dev/null 2>&1 || fresh="$$fresh $$s"; done; \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$optional >/dev/null \
	        || echo "not installed (the tests that need them skip):$$optional"; \
	      if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
	        for s in $$fresh; do dpkg -s $$s >/dev/null 2>&1 \
	          && systemctl disable --now $$s >/dev/null 2>&1; done; fi; true; fi; \
	  else echo "not installed (tests that need them will skip):$$missing$$optional"; fi; \
	fi

setup: $(BIN)/reconcile system-deps

lint: setup
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/ruff format --check reconciler tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: setup
	$(BIN)/pytest -q -n auto --maxprocesses=4 --dist loadfile tests/unit

integration: setup
	$(BIN)/pytest -q tests/integration

# The README's test command: lint, types, layers, then every test. First every test not
# marked `docker` (unit tests, and integration tests on git, sockets, the fake Kubernetes
# API server, the browser) on every core (up to 4; pytest-xdist), a file's tests on one
# worker (its module fixtures, such as the MLflow inference server, start once): on a fresh
# machine the MLflow venv is made there (under a lock, pip) while the other files run on
# the other cores, and the Docker tests find it. Then the tests marked `docker`, one at a
# time (they share the Docker Engine, port blocks and timings). Both run even when the
# first fails; the target fails when either did.
test: lint
	status=0; \
	$(BIN)/pytest -q -p no:cacheprovider -n auto --maxprocesses=4 --dist loadfile --durations=10 -m "not docker" tests || status=$$?; \
	$(BIN)/pytest -q -p no:cacheprovider --durations=25 -m docker tests || status=$$?; \
	exit $$status

# The README's main command: example-repo onto the local Docker Engine, then a request.
demo: setup
	$(BIN)/reconcile validate --repo example-repo
	$(BIN)/reconcile --repo example-repo
	$(BIN)/reconcile invoke my-endpoint --repo example-repo --request-file example-repo/sample-request.json
	$(BIN)/reconcile status --repo example-repo || true
	@echo "dashboard: $(BIN)/reconcile ui --repo example-repo, then open http://127.0.0.1:8780/"
	@echo "live, with charts, logs and a test form: $(BIN)/reconcile watch --repo example-repo --ui-port 8781, then open http://127.0.0.1:8781/"

# Every benchmark with short settings, then one table: bench/out/summary.md (printed too).
# Those needing Docker say "skipped" in it when there is none. Full runs: bench/NAME.py.
bench: setup
	$(BIN)/python bench/summary.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
