# clustral — see README.md. `make test` is what CI runs.
SHELL := /usr/bin/env bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X github.com/clustral/clustral/pkg/version.Version=$(VERSION) -X github.com/clustral/clustral/pkg/version.Commit=$(COMMIT)
BIN := $(CURDIR)/bin
CLUSTRAL := $(BIN)/clustral
comma := ,
INTEGRATION_TIMEOUT ?= 45m

.PHONY: all build build-cross test test-unit test-integration test-integration-etcd components clean-go-cache lint bench demo clean fuzz

all: build

# build builds bin/clustral for this machine, or, with GOOS and GOARCH
# (e.g. make build GOOS=darwin GOARCH=arm64), bin/clustral-<os>-<arch>.
# build-cross builds all four release platforms.
PLATFORMS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64
build:
ifeq ($(origin GOOS)$(origin GOARCH),undefinedundefined)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(CLUSTRAL) ./cli/clustral
else
	CGO_ENABLED=0 GOOS=$(GOOS) GOARCH=$(GOARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/clustral-$(GOOS)-$(GOARCH) ./cli/clustral
endif

build-cross:
	@for p in $(PLATFORMS); do \
	  echo "building $$p"; \
	  CGO_ENABLED=0 GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/clustral-$${p%/*}-$${p#*/} ./cli/clustral || exit 1; \
	done

# image builds the multi-architecture OCI image (linux/amd64 and
# linux/arm64: FROM scratch, CA bundle, user 65532) from the static
# binaries with integration/cmd/image, no container engine needed. It
# writes an OCI layout to bin/image/, or with IMAGE=registry/name pushes
# IMAGE:VERSION (credentials from ~/.docker/config.json). The files and
# the image carry the commit's time (SOURCE_DATE_EPOCH), so the same
# commit gives the same digest. docker-image builds deploy/Dockerfile
# with Docker instead.
IMAGE_PLATFORMS := linux/amd64 linux/arm64
# The CA certificates copied into the image: Debian/Ubuntu/Alpine,
# Fedora/RHEL, or macOS's bundle.
CA_BUNDLE ?= $(firstword $(wildcard /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem))
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
.PHONY: image docker-image
image:
	@for p in $(IMAGE_PLATFORMS); do \
	  echo "building $$p"; \
	  CGO_ENABLED=0 GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/clustral-$${p%/*}-$${p#*/} ./cli/clustral || exit 1; \
	done
	cd integration && $(GO) run ./cmd/image -version '$(VERSION)' -commit '$(COMMIT)' -created '$(SOURCE_DATE_EPOCH)' \
	  -platforms '$(subst $(eval) ,$(comma),$(IMAGE_PLATFORMS))' -bin '$(abspath $(BIN))' -ca-bundle '$(CA_BUNDLE)' \
	  $(if $(IMAGE),-push '$(IMAGE)',-out '$(abspath $(BIN))/image')

docker-image:
	docker build -f deploy/Dockerfile --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t $(or $(IMAGE),ghcr.io/clustral/clustral):$(VERSION) .

# release writes bin/release/: a clustral_<version>_<os>_<arch>.tar.gz
# for each of PLATFORMS (the binary, bash/zsh/fish completions, man
# pages, README.md and LICENSE) and SHA256SUMS, with
# integration/cmd/release. Check a download with: sha256sum -c SHA256SUMS
.PHONY: release
release: build-cross
	cd integration && $(GO) run ./cmd/release -version '$(VERSION)' -created '$(SOURCE_DATE_EPOCH)' \
	  -platforms '$(subst $(eval) ,$(comma),$(PLATFORMS))' -bin '$(abspath $(BIN))' -out '$(abspath $(BIN))/release' \
	  -docs '$(CURDIR)/README.md,$(CURDIR)/LICENSE'

# test: unit tests with -race, then the integration suite (which builds the
# real components once into a cache outside the clone), then the mesh and
# access suites again with each coordinator on etcd.
test: test-unit test-integration test-integration-etcd

# netstack's TestManyConnectionsAtOnce needs the stacks at full speed, so
# it runs again without the race detector (which skips it).
test-unit:
	$(GO) test -race -count=1 ./...
	$(GO) test -count=1 -run '^TestManyConnectionsAtOnce$$' ./netstack

components:
	integration/components/build.sh

# Drop the 4-5 GB Go build cache after the components are built.
clean-go-cache:
	integration/components/build.sh --clean-go-cache

test-integration: build components
	cd integration && CLUSTRAL_BIN=$(CLUSTRAL) $(GO) test -count=1 -timeout $(INTEGRATION_TIMEOUT) ./...

# test-integration-etcd: the mesh and access suites with the coordinator
# on etcd (harness.StoreEnv).
test-integration-etcd: build components
	cd integration && CLUSTRAL_TEST_STORE=etcd CLUSTRAL_BIN=$(CLUSTRAL) $(GO) test -count=1 -timeout $(INTEGRATION_TIMEOUT) ./mesh/ ./access/

# screenshots writes a PNG of every page of the web console, at 1280 and
# 390 px wide, into docs/console/ (shown in docs/console.md), from the
# browser test that checks each page (integration/console TestPages).
.PHONY: screenshots
screenshots: build components
	mkdir -p docs/console
	cd integration && CLUSTRAL_BIN=$(CLUSTRAL) CLUSTRAL_SCREENSHOTS=$(CURDIR)/docs/console $(GO) test -count=1 -run '^TestPages$$' ./console/

# fuzz runs every fuzz target of the module for FUZZTIME each (their seed
# corpora, testdata/fuzz/, already run as tests in test-unit). A crasher
# is written to the package's testdata/fuzz/ and fails the target.
FUZZTIME ?= 20s
.PHONY: fuzz
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	cd integration && $(GO) vet ./...

# bench runs the Go benchmarks (kept in $(BIN)/bench-unit.txt), then
# integration/cmd/bench against real processes, which prints
# BENCH <name> <value> <unit> lines (kept in $(BIN)/bench.txt). Both
# always run; the target fails if either did. BENCH_FLAGS go to
# integration/cmd/bench; by default it keeps CPU and allocation profiles
# of the agent and `clustral up` over the GET bench in $(BIN)/profiles
# (go tool pprof $(BIN)/profiles/agent.cpu.pprof). BENCH_FLAGS= turns
# them off.
BENCH_FLAGS ?= -profile-dir $(abspath $(BIN))/profiles
bench: build components
	set -o pipefail; rc=0; \
	$(GO) test -run '^$$' -bench . -benchtime 2s ./... | tee $(BIN)/bench-unit.txt || rc=1; \
	(cd integration && CLUSTRAL_BIN=$(CLUSTRAL) $(GO) run ./cmd/bench $(BENCH_FLAGS)) | tee $(BIN)/bench.txt || rc=1; \
	exit $$rc

# demo: Dex, a coordinator on its embedded defaults, a real kube-apiserver
# (or DEMO_KUBECONFIG), an agent, a non-interactive login, `clustral up`
# and `kubectl auth whoami` through the mesh.
demo: build components
	cd integration && CLUSTRAL_BIN=$(CLUSTRAL) $(GO) run ./cmd/demo

clean:
	rm -rf $(BIN)
