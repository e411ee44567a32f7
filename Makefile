# ferrocast — the two set-up commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
CARGO ?= cargo
CONFIG ?= config/ferrocast.toml
BIN := target/release/ferrocast
# Debian packages the test-suite drives for real.
TEST_PACKAGES := redis-server redis-tools nginx prometheus
APT_STAMP := target/.apt-deps

.PHONY: run build release test deps unit lint fmt bench loadtest soak clean config-check

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

## deps: install the real programs tests drive (redis, nginx, prometheus) when missing
deps: $(APT_STAMP)
$(APT_STAMP):
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server redis-tools"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p target && touch $(APT_STAMP)

## test: install what the tests need, then run every test
test: deps
	$(CARGO) build --workspace
	$(CARGO) test --workspace
	@if [ -x sysctl/test_tune.sh ]; then bash sysctl/test_tune.sh; fi
	@if [ -f grafana/alerts_test.yml ]; then promtool check rules grafana/alerts.yml && promtool test rules grafana/alerts_test.yml; fi
	@if [ -x deploy/nginx-test-config.sh ]; then bash deploy/nginx-test-config.sh; fi

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

## soak: long, ignored tests
soak: build
	$(CARGO) test --workspace -- --ignored --nocapture

clean:
	$(CARGO) clean
