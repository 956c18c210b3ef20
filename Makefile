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

# Container image, built on a local base image because no registry is reached:
# docker/build-base-image makes one from Debian sid with Debian's HAProxy.
DOCKER_CACHE := .cache/docker
IMAGE ?= haproxy-acme-supervisor:dev
BASE_HAPROXY_VERSION ?= 3.2
BASE_IMAGE := haproxy-acme-supervisor-base:$(BASE_HAPROXY_VERSION)
COMPOSE_PLUGIN_DIR := $(HOME)/.docker/cli-plugins

.PHONY: docker-setup image

# Installs Debian's docker.io if dockerd is missing, starts dockerd in the
# background unless a daemon answers (it keeps running after make exits), and
# installs Compose v2 from Debian sid as a Docker CLI plugin.
docker-setup:
	@command -v dockerd >/dev/null || { \
		echo "installing docker.io from the machine's apt sources"; \
		apt-get -qq update && \
		DEBIAN_FRONTEND=noninteractive apt-get -qq install -y docker.io >/dev/null; }
	@mkdir -p $(DOCKER_CACHE)
	@docker info >/dev/null 2>&1 || { \
		echo "starting dockerd, log in $(DOCKER_CACHE)/dockerd.log"; \
		setsid -f dockerd >>$(DOCKER_CACHE)/dockerd.log 2>&1 </dev/null; \
		for attempt in $$(seq 60); do \
			docker info >/dev/null 2>&1 && break; sleep 1; \
		done; \
		docker info >/dev/null 2>&1 || { \
			echo "dockerd did not answer within 60 s; see $(DOCKER_CACHE)/dockerd.log" >&2; \
			exit 1; }; }
	@docker compose version >/dev/null 2>&1 || \
		scripts/fetch-debian-tools $(COMPOSE_PLUGIN_DIR) compose

# Certificates added to this machine's trust store (Debian keeps them in
# /usr/local/share/ca-certificates), such as a TLS-intercepting proxy's CA,
# are trusted by pip inside the build as well.
LOCAL_CA_FILES := $(wildcard /usr/local/share/ca-certificates/*.crt)
BUILD_CA_ARG := $(if $(LOCAL_CA_FILES),--build-arg BUILD_CA_CERTIFICATES="$$(cat $(LOCAL_CA_FILES))")

# The docker build reaches PyPI and the Debian archive through the host's
# network (--network host), and never pulls an image (--pull=false).
image: docker-setup
	@docker image inspect $(BASE_IMAGE) >/dev/null 2>&1 || \
		docker/build-base-image $(BASE_HAPROXY_VERSION) >/dev/null
	@echo "building $(IMAGE) on $(BASE_IMAGE)"
	@docker build --pull=false --network host \
		--build-arg HAPROXY_IMAGE=$(BASE_IMAGE) $(BUILD_CA_ARG) \
		-f docker/Dockerfile -t $(IMAGE) .
