# ferrocast — the two set-up commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
CARGO ?= cargo
CONFIG ?= config/ferrocast.toml
BIN := target/release/ferrocast
# Debian packages the test-suite drives for real.
TEST_PACKAGES := redis-server redis-tools nginx prometheus nodejs npm chromium
APT_STAMP := target/.apt-deps
# Every script-driven test runs against the binary `make test` just built.
export FERROCAST_BIN := $(CURDIR)/target/debug/ferrocast

.PHONY: run build release test deps unit lint fmt bench loadtest soak clean config-check \
	test-rust test-ops test-clients test-example e2e example python-test js-test pusher-test fleet-bench \
	conformance chaos chaos-short

## run: build a release node and start it on the embedded memory broker
run: release
	@echo "== ferrocast on the embedded memory broker (config: $(CONFIG)) =="
	@echo "   WebSocket : ws://127.0.0.1:8080/ws?token=<token>"
	@echo "   API key   : demo-api-key   (Authorization: apikey demo-api-key)"
	@echo "   secret    : demo-token-secret"
	@echo "   token for user 'demo':"
	@echo "     $$($(BIN) token --secret demo-token-secret --user demo --ttl 24h)"
	@echo "   try: curl -H 'Authorization: apikey demo-api-key' -d '{\"channel\":\"user:demo\",\"data\":{\"text\":\"hi\"}}' http://127.0.0.1:8080/api/publish"
	@echo "   metrics: http://127.0.0.1:9090/metrics"
	exec $(BIN) serve --config $(CONFIG)

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release --workspace

## deps: install the real programs tests drive (redis, nginx, prometheus, node, chromium) when missing
deps: $(APT_STAMP)
$(APT_STAMP):
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	python3 -m venv --help >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p target && touch $(APT_STAMP)

## test: install what the tests need, then run every test
test: deps
	$(CARGO) build --workspace
	$(MAKE) --no-print-directory test-rust chaos-short conformance test-ops test-clients test-example e2e

## test-rust: unit and integration tests (real binary, real Redis / Redis Cluster)
test-rust:
	$(CARGO) test --workspace

## chaos-short: the Redis Cluster chaos suite in short (master SIGKILL, SIGSTOP 6 s, all Redis down
##   5 s; 2 debug nodes, 60 clients; about a minute). tests/chaos.rs
chaos-short:
	$(CARGO) test --workspace --test chaos -- --ignored --exact chaos_short --nocapture

## chaos: the full chaos suite on release nodes (every scenario, 10k clients for the node kill;
##   about 10 minutes); the table lands in target/chaos/results.md (docs/benchmarks.md). CHAOS_ONLY=a,b
##   picks scenarios by name.
chaos:
	$(CARGO) test --release --test chaos -- --ignored --exact chaos_full --nocapture

## conformance: RFC 6455 Autobahn|Testsuite cases 1-10 against the echo route (tests/conformance/, docs/conformance.md)
##   CASES="1.* 2.*" selects; CONFORMANCE_CLIENT=wstest cross-checks with the real wstest (needs Python 2.7)
conformance:
	bash tests/conformance/run.sh

## test-ops: OS tuning, alert rules, Prometheus + Grafana queries, nginx (real programs)
test-ops:
	bash sysctl/test_tune.sh
	promtool check rules grafana/alerts.yml
	promtool test rules grafana/alerts_test.yml
	bash grafana/test_check_queries.sh
	bash grafana/test_prometheus_live.sh
	bash deploy/test_nginx.sh
	python3 deploy/test_nginx_fleet.py

## test-clients: the JavaScript and Python clients against the real node
test-clients: js-test python-test pusher-test
js-test:
	bash clients/js/test.sh
python-test:
	bash clients/python/run-tests.sh
## pusher-test: the Pusher protocol with the real pusher-js, pusher (Node) and pusher (Python) libraries
pusher-test:
	bash tests/pusher/test.sh

## test-example: the Django example's own tests; e2e: the four scenarios in headless Chromium
test-example:
	bash examples/django-library/run.sh test
e2e:
	bash examples/django-library/e2e/run.sh

## example: the Django library demo beside a node (http://127.0.0.1:8000)
example: build
	bash examples/django-library/run.sh

unit:
	$(CARGO) test --workspace --lib --bins

## lint: rustfmt + clippy with warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

config-check: build
	target/debug/ferrocast config check $(CONFIG)

## bench: criterion micro-benchmarks of the hot path
bench:
	$(CARGO) bench --bench hotpath

## loadtest: the standard wsbench suite against a release node (rewrites docs/benchmarks.md)
loadtest: release
	bash loadtest/suite.sh

## fleet-bench: two release nodes on a real Redis Cluster vs one node (rewrites docs/benchmarks.md)
fleet-bench: release
	bash loadtest/fleet.sh

## pusher-compare: Pusher protocol 7, ferrocast vs Sockudo under the same `wsbench --pusher` runs
##   (idle memory per subscribed socket, CPU per delivery, latency); needs a sockudo binary
##   (SOCKUDO_BIN, or `cargo install sockudo` with protobuf-compiler); results under target/pusher-compare/
.PHONY: pusher-compare
pusher-compare:
	$(CARGO) build --release -p ferrocast -p wsbench
	bash loadtest/pusher_compare.sh

## million: one million live sockets on this box: 55 release nodes (shards = 1, Redis Cluster unless
##   MILLION_BROKER=memory), wsbench --procs over 127.0.0.0/8; ramp, hold, broadcast, notify, drain
##   one node; JSON under target/million/ (loadtest/million.sh; MILLION_TARGET=50000 for a smoke run)
.PHONY: million
million:
	$(CARGO) build --release -p ferrocast -p wsbench
	bash loadtest/million.sh

## soak: long, ignored tests
soak: build
	$(CARGO) test --workspace -- --ignored --nocapture

clean:
	$(CARGO) clean
