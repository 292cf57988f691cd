# memstage: `make up` installs everything and starts the embedded default; `make test` installs and tests.
# Works on a fresh Debian/Ubuntu machine as root (or with sudo); Python 3.11+ must be on PATH as python3.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# FUSE libraries for the staging-directory mount: libfuse2 and libfuse3-3 coexist; only one of the
# fuse/fuse3 tool packages may be installed, and fuse3 is the one kept.
DEBS    = libfuse2 libfuse3-3 fuse3
# Only the tests need these: a real Prometheus server scrapes a real deployment.
TEST_DEBS = prometheus rsync

# Settings of `make up`, passed to `memstage up` (see docs/operations.md for all of them).
MOUNT   ?= memstage-mnt
UP_ARGS ?= --benefactors 2 --memory 1GiB --mount $(MOUNT)

.PHONY: setup debs test-debs venv up test lint bench stubs clean

setup: debs venv

debs test-debs: PKGS = $(if $(filter test-debs,$@),$(TEST_DEBS),$(DEBS))
debs test-debs:
	@missing=$$(for p in $(PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

venv: $(BIN)/memstage

$(BIN)/memstage: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	@touch $@

up: setup
	@mkdir -p $(MOUNT)
	$(BIN)/memstage up $(UP_ARGS)

lint: venv
	$(BIN)/python protos/gen.py --check
	$(BIN)/ruff check .
	$(BIN)/mypy memstage

# Most tests wait on real servers and mounts, not on the CPU: four workers keep two cores busy.
TEST_WORKERS ?= 4

# The suite runs on the default transport (stream); the data-path tests run again over gRPC, the
# other transport a client may choose (the transport contract covers both in the first run).
GRPC_TESTS ?= tests/test_data_path.py tests/test_redundancy.py tests/test_dedup.py tests/test_readahead.py

test: setup test-debs lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --transport grpc $(GRPC_TESTS)

bench: setup
	$(BIN)/memstage bench

stubs: venv
	$(BIN)/python protos/gen.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
