# Entry points for a fresh Debian or Ubuntu machine: `make demo` and `make test`.
# Both run `make setup` first, which needs network access to PyPI and to the
# Debian archive named in the machine's apt sources.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Empty: a HAProxy 3.2+ on PATH, else Debian's 3.2. Set 3.2 or 3.4 to choose.
HAPROXY_VERSION ?=

.PHONY: setup demo test test-unit lint clean

# The tests run against the default HAProxy and against 3.4, the newest build.
setup: $(VENV)/.installed $(BIN)/haproxy $(BIN)/haproxy-3.4 $(BIN)/pebble

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(BIN)/haproxy: | $(VENV)/.installed
	HAPROXY_VERSION=$(HAPROXY_VERSION) scripts/fetch-debian-tools $(BIN) haproxy

# A second build for the version matrix; it leaves $(BIN)/haproxy alone.
$(BIN)/haproxy-%: | $(VENV)/.installed
	HAPROXY_VERSION=$* HAPROXY_LINK_DEFAULT=0 scripts/fetch-debian-tools $(BIN) haproxy

$(BIN)/pebble: | $(VENV)/.installed
	scripts/fetch-debian-tools $(BIN) pebble

demo: setup
	$(BIN)/python -m haproxy_acme_supervisor.lab demo

test: setup
	$(BIN)/pytest -q

test-unit: setup
	$(BIN)/pytest -q -m 'not integration and not docker'

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .cache
