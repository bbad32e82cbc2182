# mem-cuda. `make demo` runs the main job, `make test` runs every test.
GO        ?= go
BIN_DIR   ?= $(CURDIR)/bin
PYTHON    ?= python3
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.Version=$(VERSION) -X github.com/memcuda/memcuda/pkg/server.Software=memcuda-agent/$(VERSION)

.PHONY: image gpu-suite all build demo test test-go test-python python-ext test-cluster lint fuzz soak bench bench-handover bench-pool bench-socket bench-host envtest-assets clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN_DIR)/ ./cmd/...

demo: build
	BIN_DIR=$(BIN_DIR) bash scripts/demo.sh

test: lint test-go test-python test-cluster

lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...

# Fuzz seed corpora run as part of the normal tests. The controller and
# chart tests need a kube-apiserver and etcd (envtest) and helm: the scripts/
# scripts build them once into ~/.cache/memcuda.
test-go:
	bash scripts/ensure-redis.sh
	eval "$$(bash scripts/envtest-assets.sh)" && HELM="$$(bash scripts/helm.sh)" $(GO) test -race -count=1 -timeout 20m ./...

# A real single-node cluster (kubelet, containerd, pods) in its own network
# namespace: scripts/cluster-test.sh.
test-cluster:
	bash scripts/cluster-test.sh

# The client's optional C decoder (python/memcuda/_speedups.c), built in
# place for a checkout; the tests require it (and test the pure-Python
# decoder beside it).
python-ext:
	cd python && $(PYTHON) setup.py -q build_ext --inplace
	cd python && $(PYTHON) -c 'import memcuda._speedups'

test-python: build
	PYTHON=$(PYTHON) bash scripts/ensure-python-deps.sh
	$(MAKE) python-ext
	cd python && MEMCUDA_BIN_DIR=$(BIN_DIR) MEMCUDA_REQUIRE_SPEEDUPS=1 $(PYTHON) -m pytest -q
	cd python && $(PYTHON) -m mypy memcuda
	# The GPU benchmarks only run on a GPU machine: type-checked here against the client.
	cd python && MYPYPATH=. $(PYTHON) -m mypy ../bench/*.py

# Each fuzz target for FUZZ_EXECS executions (default a million); `make
# soak` runs each for SOAK_TIME and the agent's hostile-load soak, for
# release checks.
FUZZ_EXECS ?= 1000000
SOAK_TIME  ?= 10m
FUZZ_TARGETS := FuzzParse:./pkg/queue FuzzReadFrame:./api/v1 FuzzDecodePlain:./api/v1 FuzzPlainResponse:./api/v1 FuzzValidateName:./pkg/tensor

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "$${t%%:*}: $(FUZZ_EXECS) executions"; \
	  $(GO) test -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(FUZZ_EXECS)x "$${t#*:}"; done

soak: build
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "$${t%%:*}: $(SOAK_TIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(SOAK_TIME) "$${t#*:}"; done
	BIN_DIR=$(BIN_DIR) bash bench/conns.sh

bench: bench-pool bench-host bench-socket

bench-pool:
	$(GO) test -run '^$$' -bench . -benchtime 200000x -count 5 ./pkg/pool | tee /tmp/memcuda-bench-pool.txt
	$(GO) run ./bench/pooltable < /tmp/memcuda-bench-pool.txt

# The whole agent (host backend here; vmm and legacy too on a GPU machine)
# answering raw frames over its socket, against an echo server.
bench-socket:
	bash scripts/ensure-redis.sh
	$(GO) test -run '^$$' -bench Socket -benchtime 4000x -count 3 ./pkg/agent

bench-host: build
	BIN_DIR=$(BIN_DIR) bash bench/host.sh

# How long clients wait while an agent hands over to a new instance.
bench-handover: build
	BIN_DIR=$(BIN_DIR) bash bench/handover.sh

# Builds the GPU suite into .device/; run it on a GPU machine with
# `bash scripts/gpu-suite-run.sh` (the device tool carries .device).
gpu-suite:
	bash scripts/gpu-suite-build.sh

envtest-assets:
	bash scripts/envtest-assets.sh

# The agent image from the Dockerfile, built and checked without a Docker
# engine (buildah, as root); IMAGE=... names it.
image:
	bash scripts/image-build.sh

clean:
	rm -rf $(BIN_DIR)
