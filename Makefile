# Every target installs what it needs: a fresh clone runs `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMPS := .stamps
PROTO_SRC := $(wildcard protos/agent_recorder/v1/*.proto)
GEN_DIR := recorder_client
# Exact versions of everything the repo installs (users get pyproject's ranges).
CONSTRAINTS := constraints.txt

.PHONY: setup proto demo serve test test-fast lint bench fmt clean constraints rust-test rust-lint

setup: $(STAMPS)/venv $(STAMPS)/node

$(STAMPS)/venv: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[server,dev]'
	mkdir -p $(STAMPS) && touch $@

$(STAMPS)/node: package.json
	npm install --silent --no-audit --no-fund
	mkdir -p $(STAMPS) && touch $@

# The web view's tests drive Debian's chromium (Playwright's own browsers are never
# downloaded). Best effort, tried once (rm .stamps/chromium to retry): without it,
# those tests skip and say why.
$(STAMPS)/chromium:
	command -v chromium >/dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
	  echo "chromium could not be installed: the web view's browser tests will skip"
	mkdir -p $(STAMPS) && touch $@

# Regenerates the committed stubs from protos/ with the pinned grpcio-tools.
proto: $(STAMPS)/venv
	rm -f $(GEN_DIR)/agent_recorder/v1/*_pb2*.py $(GEN_DIR)/agent_recorder/v1/*_pb2*.pyi
	PATH=$(CURDIR)/$(BIN):$$PATH $(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=$(GEN_DIR) --mypy_out=$(GEN_DIR) $(PROTO_SRC)
	PATH=$(CURDIR)/$(BIN):$$PATH $(PY) -m grpc_tools.protoc -Iprotos \
	  --grpc_python_out=$(GEN_DIR) --mypy_grpc_out=$(GEN_DIR) \
	  protos/agent_recorder/v1/recorder_service.proto

demo: setup
	$(PY) -m recorder_server.demo

serve: setup
	$(BIN)/agent-recorder serve

test: setup $(STAMPS)/chromium
	$(BIN)/pytest -q
	$(MAKE) rust-test

# The inner loop: everything but the tests marked slow (see pyproject's markers).
test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	node_modules/.bin/buf lint
	$(MAKE) rust-lint

fmt: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	cd $(RUST_DIR) && cargo build --release --example bench
	AGENT_RECORDER_RUST_BENCH=$(CURDIR)/$(RUST_DIR)/target/release/examples/bench $(PY) -m bench.run

# The Rust client (clients/rust): its integration tests drive this checkout's sidecar
# and must not skip here. protoc comes from the protoc-bin-vendored crate.
RUST_DIR := clients/rust
RUST_TEST_ENV := AGENT_RECORDER_REQUIRE_SIDECAR=1 AGENT_RECORDER_BIN=$(CURDIR)/$(BIN)/agent-recorder

rust-test: setup
	cd $(RUST_DIR) && $(RUST_TEST_ENV) cargo test --features phi-core

rust-lint:
	cd $(RUST_DIR) && cargo clippy --all-targets --features phi-core -- -D warnings
	cd $(RUST_DIR) && cargo clippy --all-targets -- -D warnings
	cd $(RUST_DIR) && cargo fmt --check

# Re-resolves the newest versions pyproject's ranges allow, in a scratch venv, into
# $(CONSTRAINTS). Run it on purpose (then make setup, make test) and commit the result.
constraints:
	rm -rf .constraints-venv && $(PYTHON) -m venv .constraints-venv
	.constraints-venv/bin/pip install -q --upgrade pip
	.constraints-venv/bin/pip install -q -e '.[server,dev]'
	{ head -n 2 $(CONSTRAINTS); .constraints-venv/bin/pip freeze --exclude-editable | \
	  grep -v '^agent-recorder'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS) && rm -rf .constraints-venv

clean:
	rm -rf $(VENV) node_modules $(STAMPS) $(RUST_DIR)/target
