# baton: `make run` to try it, `make test` for the whole suite, `make bench` for figures.
SWIFT ?= swift
CONFIG ?= config/dev.toml

.PHONY: run test build deps bench check-config clean

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build --product batond

# Starts batond in the foreground on the dev config (state under ./.baton/), with the
# demo agent's releases in place (scripts/demo-releases.sh).
run: build
	scripts/demo-releases.sh .baton
	.build/debug/batond --config $(CONFIG)

check-config: build
	.build/debug/batond --check-config --config $(CONFIG)

# Builds everything (tests and executables) first, so the integration tests find
# the batond binary they start.
test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

bench:
	@scripts/bench.sh

clean:
	rm -rf .build .baton bench/out
