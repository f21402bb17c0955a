# kpcrypt. `make demo` runs the main job on an embedded default; `make test`
# runs every test. See README.md.

GO       ?= go
FUZZTIME ?= 30s
# Modules kept apart so that their dependencies never reach the library's.
SUBMODULES := $(wildcard interop/go.mod benchmarks/go.mod blob/go.mod examples/beam/go.mod examples/otel/go.mod)
# Submodules whose tests run without the race detector: Apache Beam's SDK
# is too large to build with it in reasonable time. They are still vetted.
NORACE := examples/beam/

.PHONY: all build deps test test-short demo bench bench-quick fuzz vectors vet cross clean

all: build

build:
	$(GO) build -o bin/ ./cmd/...

# Every module's dependencies, so that make test then runs offline.
deps:
	$(GO) mod download
	@for m in $(dir $(SUBMODULES)); do (cd $$m && $(GO) mod download) || exit 1; done

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

test: vet cross
	$(GO) test -race -count=1 ./...
	@for m in $(dir $(SUBMODULES)); do \
		race=-race; case " $(NORACE) " in *" $$m "*) race= ;; esac; \
		echo "== $$m $$race"; (cd $$m && $(GO) vet ./... && $(GO) test $$race -count=1 ./...) || exit 1; \
	done

# Everything builds and vets with cgo off (no C compiler) on every OS and
# architecture we ship for; only the PKCS#11 backend needs cgo, and without
# it says so.
CROSS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64
cross:
	@for t in $(CROSS); do \
		echo "== CGO_ENABLED=0 $$t"; \
		CGO_ENABLED=0 GOOS=$${t%/*} GOARCH=$${t#*/} $(GO) vet ./... || exit 1; \
	done

test-short:
	$(GO) test -short -count=1 ./...

demo: deps build
	./scripts/demo.sh

# kpcrypt side by side with age, Tink, minio/sio and raw AES-GCM, in fresh
# processes over several rounds; writes BENCHMARKS.md (see benchmarks/).
# `make bench-quick` for a small run (BENCHFLAGS=-quick, elsewhere).
bench:
	cd benchmarks && GO=$(GO) $(GO) run ./cmd/kpbench -repo .. -o ../BENCHMARKS.md $(BENCHFLAGS)

# The same cases at small sizes, one round, in under a minute: a check of
# the harness, not numbers to publish. Writes BENCHQUICKOUT, not
# BENCHMARKS.md, prints the targets table, and does not fail on unmet ones.
BENCHQUICKOUT ?= /tmp/kpbench-quick.md
bench-quick:
	cd benchmarks && GO=$(GO) $(GO) run ./cmd/kpbench -repo .. -quick -o $(BENCHQUICKOUT) $(BENCHFLAGS)

# Every fuzz target for FUZZTIME each; crashers land in testdata/fuzz.
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

# Regenerate the test vectors after a deliberate format change (and update
# FORMAT.md in the same commit).
vectors:
	$(GO) test -count=1 ./stream -run '^TestVectors$$' -update
	$(GO) test -count=1 ./envelope -run '^TestVectors$$' -update

clean:
	rm -rf bin
