# Everything a fresh machine needs is installed by these targets; nothing by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the Docker tests and the demo use: debootstrap builds the local Python
# base image where no image can be pulled; docker-registry serves image-push tests.
SYSTEM_PACKAGES ?= debootstrap docker-registry
# Wanted, not required: chromium and chromium-driver run the dashboard's browser tests,
# which skip without them (a failed download of a browser never fails the setup).
OPTIONAL_PACKAGES ?= chromium chromium-driver

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
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$optional >/dev/null \
	        || echo "not installed (the tests that need them skip):$$optional"; fi; \
	  else echo "not installed (tests that need them will skip):$$missing$$optional"; fi; \
	fi

setup: $(BIN)/reconcile system-deps

lint: setup
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/ruff format --check reconciler tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: setup
	$(BIN)/pytest -q tests/unit

integration: setup
	$(BIN)/pytest -q tests/integration

# The README's test command: lint, types, layers, then every test.
test: lint
	$(BIN)/pytest -q -p no:cacheprovider tests

# The README's main command: example-repo onto the local Docker Engine, then a request.
demo: setup
	$(BIN)/reconcile validate --repo example-repo
	$(BIN)/reconcile --repo example-repo
	$(BIN)/reconcile invoke my-endpoint --repo example-repo --request-file example-repo/sample-request.json
	$(BIN)/reconcile status --repo example-repo || true
	@echo "dashboard: $(BIN)/reconcile ui --repo example-repo, then open http://127.0.0.1:8780/"
	@echo "live, with charts, logs and a test form: $(BIN)/reconcile watch --repo example-repo --ui-port 8781, then open http://127.0.0.1:8781/"

bench: setup
	$(BIN)/python bench/plan_scale.py
	$(BIN)/python bench/daemon.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/fix_during_rollout.py
	$(BIN)/python bench/ui.py
	$(BIN)/python bench/many_endpoints.py --short

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
