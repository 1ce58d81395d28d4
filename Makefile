# Signpost: the two commands a new user needs are `make run` and `make test`.
SWIFT    ?= swift
LISTEN   ?= 127.0.0.1:8600
# The demo answers its own names only; RUN_FLAGS= forwards other names to resolv.conf's nameservers.
RUN_FLAGS ?= --no-forward
# The admin endpoint: /ui, /v1/*, /metrics, /health, /ready (and what `signpost explain` asks by default).
ADMIN    ?= 127.0.0.1:8080
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The release binary links the Swift runtime statically: the one the tests run is the one the .deb ships.
RELEASE  := -c release --static-swift-stdlib

# System packages: what building and serving needs, and what the test suite adds.
RUN_PACKAGES  := libldns-dev libssl-dev pkg-config
TEST_PACKAGES := $(RUN_PACKAGES) bind9-dnsutils knot-dnsutils ldnsutils iproute2 etcd-server etcd-client knot dnsperf unbound \
                 golang-go golang-google-grpc-dev dnsviz zonemaster-cli musl-tools python3-consul chromium fonts-dejavu-core \
                 openssl python3-cryptography lintian systemd procps dpkg-dev

.PHONY: deb run test build deps test-deps check clean grpc-probe bench bench-results bench-registry bench-forward bench-micro fuzz fuzz-build

# Installs only what is missing, so a second run does not touch apt.
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps:
	$(call apt_install,$(RUN_PACKAGES))

test-deps:
	$(call apt_install,$(TEST_PACKAGES))

build: deps
	$(SWIFT) build $(RELEASE) --product signpost

# Serves the demo catalog in zones/ on $(LISTEN), over UDP and TCP, with the status page on http://$(ADMIN)/ui.
run: build
	.build/release/signpost serve --listen $(LISTEN) --admin $(ADMIN) --catalog zones/catalog --zones zones $(RUN_FLAGS)

# Validates the demo catalog and zones.
check: build
	.build/release/signpost check --catalog zones/catalog --zones zones

# A real grpc-go client and server (Tests/EndToEndTests/GRPCProbe), built offline from Debian's Go and grpc-go.
GRPC_PROBE := .build/grpc-probe
grpc-probe: test-deps
	@mkdir -p $(GRPC_PROBE)/src/grpcprobe
	@cp Tests/EndToEndTests/GRPCProbe/main.go $(GRPC_PROBE)/src/grpcprobe/
	cd $(GRPC_PROBE) && GO111MODULE=off GOPATH=$$PWD:/usr/share/gocode GOCACHE=$$PWD/cache go build -o grpc-probe grpcprobe

test: test-deps grpc-probe
	$(SWIFT) build $(RELEASE) --product signpost
	$(SWIFT) build --build-tests
	@# After the debug build, which the man page's generate-manual plugin reuses.
	$(MAKE) deb
	$(SWIFT) test --skip-build --disable-xctest --skip OperationsTests --skip FleetTests
	@# The operations suite puts a 20k qps load and an 800-connection flood on the machine, and the fleet test runs
	@# a 3-member etcd cluster and two Signposts checked every 20 ms: they run after the rest, one at a time, so
	@# that the timing checks elsewhere (a catalog edit seen within 1 s) do not share the cores with them.
	$(SWIFT) test --skip-build --disable-xctest --filter OperationsTests
	$(SWIFT) test --skip-build --disable-xctest --filter FleetTests

# Results that tests produce for the repository: the status page's screenshot (docs/operations.md) and the fleet report, written
# into bench/results (`make test` writes them to a temporary directory).
bench-results: test-deps grpc-probe
	$(SWIFT) build $(RELEASE) --product signpost
	$(SWIFT) build --build-tests
	SIGNPOST_RESULTS_DIR=$(CURDIR)/bench/results $(SWIFT) test --skip-build --disable-xctest --filter "StatusPageBrowserTests|FleetTests"

# Registry benchmarks: etcd put -> DNS answer latency, RSS and CPU per update at 1k×10 and 10k×10; the Consul
# watcher against the stand-in (200-connection cap) at 2,000×5, with the connections it holds.
bench-registry: test-deps build
	python3 bench/registry_bench.py
	python3 bench/consul_registry_bench.py

# Authoritative benchmark against Knot, NSD, Unbound and dnsmasq: CPU per query, latency, saturation.
bench: test-deps build
	$(call apt_install,knot nsd unbound dnsmasq-base dnsperf util-linux)
	python3 bench/authoritative_bench.py

# libFuzzer targets (fuzz/): the parsers, and the whole query path, for FUZZ_SECONDS on FUZZ_WORKERS processes each.
FUZZ_SECONDS ?= 300
FUZZ_WORKERS ?= 2
fuzz: fuzz-build
	python3 fuzz/run.py $(FUZZ_SECONDS) $(FUZZ_WORKERS)

fuzz-build: deps
	$(SWIFT) build -c release --package-path fuzz --scratch-path fuzz/.build -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library

# Microbenchmarks (ordo-one/benchmark, a package of their own in bench/micro): ns and mallocs per operation.
bench-micro: deps
	python3 bench/micro_summary.py

# Forwarding benchmark: CPU per cache hit against Unbound and dnsmasq, and what a miss adds.
bench-forward: test-deps build
	$(call apt_install,unbound dnsmasq-base dnsperf util-linux)
	python3 bench/forward_bench.py

clean:
	rm -rf .build

# The Debian package for operators: signpost_<version>_<arch>.deb at the top level (packaging/build-deb.sh says
# what is in it). PackageTests installs it into a throwaway root, and checks it with lintian and systemd-analyze.
deb: deps
	$(call apt_install,dpkg-dev)
	SWIFT=$(SWIFT) RELEASE="$(RELEASE)" packaging/build-deb.sh
