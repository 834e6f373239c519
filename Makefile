# Two commands matter: `make demo` and `make test`. Everything else is a helper of theirs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration bench verdicts soak system-deps clean lock

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# constraints.txt: the exact versions the suite passed on (`make lock` writes it from
# pyproject.toml's ranges).
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

lock: $(PY)
	$(PY) -m tests.support.lockfile

# redis-server, redis-cli (the test Redis Cluster), prometheus and promtool are real processes in
# the tests, chromium loads the report pages in them; install them when missing.
system-deps:
	@if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null || ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  echo "installing redis-server (redis-cli: the test Redis Cluster) and prometheus from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server prometheus >/dev/null; \
	fi
	@command -v kubectl >/dev/null || { echo "installing kubectl (kubernetes-client) from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq kubernetes-client >/dev/null; }
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { echo "installing chromium and chromium-driver from Debian (browser tests of the report pages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }
	@command -v openssl >/dev/null || { echo "installing openssl from Debian (TLS test certificates)"; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq openssl >/dev/null; }
	@command -v wrk >/dev/null || { echo "installing wrk from Debian (make bench)"; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk >/dev/null; }

demo: $(STAMP)
	$(VENV)/bin/rollout-analyzer demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy analysis worker webhooks cli tests

# Two pytest processes, each with its own Redis, Prometheus and Redis Cluster; a module's tests
# stay on one (they share its services). TEST_PROCESSES=0 runs the suite in this process.
TEST_PROCESSES ?= 2
test: $(STAMP) system-deps lint typecheck
	$(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadfile

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

bench: $(STAMP) system-deps
	$(PY) -m tests.perf.bench

# How often the verdicts are right, the way Argo asks (simulated rollouts; a few minutes).
verdicts: $(STAMP)
	$(PY) -m tests.perf.verdicts

# Not part of `make test`: 2,000 rollouts polling every 30 s for 14 minutes (SOAK_* knobs).
soak: $(STAMP) system-deps
	$(PY) -m tests.perf.soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
