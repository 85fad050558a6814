# baton: `make run` to try it, `make test` for the whole suite, `make bench` for figures,
# `make soak` and `make fuzz` for the long proofs (docs/reliability.md).
SWIFT ?= swift
CONFIG ?= config/dev.toml

.PHONY: run test contract soak build deps deps-test bench fuzz check-config clean man

# What building and running need; `make test` adds the test tools (promtool, the
# Python tools, ...): scripts/install-deps.sh says which is which.
deps:
	@scripts/install-deps.sh run

deps-test:
	@scripts/install-deps.sh test

build: deps
	$(SWIFT) build --product batond
	$(SWIFT) build --product baton
	$(SWIFT) build --product http-agent

# Starts batond in the foreground on the dev config (state under ./.baton/), with the
# demo agent's releases in place (scripts/demo-releases.sh).
run: build
	scripts/demo-releases.sh .baton
	.build/debug/batond --config $(CONFIG)

check-config: build
	.build/debug/batond --check-config --config $(CONFIG)

# Builds everything (tests and executables) first, so the integration tests find
# the batond binary they start; then the contract test.
test: deps-test
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	$(MAKE) --no-print-directory contract

# schemathesis (pinned in scripts/requirements-test.txt) against a real batond:
# no undocumented 5xx, every answer as api/openapi.yaml says (scripts/schemathesis.sh).
contract: deps-test
	$(SWIFT) build --product batond
	scripts/schemathesis.sh

# The crash-point soak (Tests/BatondTests/SoakTests.swift): 500 cycles of kill -9 and
# restart of batond while agents hand over; `make test` runs 10. BATON_SOAK_SEED=N
# repeats a run's schedule; BATON_SOAK_ITERATIONS=N sets the length.
soak: deps
	$(SWIFT) build --build-tests
	BATON_SOAK_ITERATIONS=$${BATON_SOAK_ITERATIONS:-500} $(SWIFT) test --skip-build --filter SoakTests

bench:
	@scripts/bench.sh

# libFuzzer with AddressSanitizer on the parsers (scripts/fuzz.sh), FUZZ_SECONDS per
# target, built apart in .build-fuzz; `make test` replays the corpus it grows.
FUZZ_SECONDS ?= 60
fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# Man pages for baton and batond (one page per subcommand too) in .build/man/, from
# their argument-parser definitions by argument-parser's generate-manual plugin.
man: deps
	$(SWIFT) package plugin generate-manual --configuration debug --multi-page
	mkdir -p .build/man
	cp .build/plugins/GenerateManual/outputs/baton/*.1 .build/plugins/GenerateManual/outputs/batond/*.1 .build/man/
	@ls .build/man

clean:
	rm -rf .build .build-fuzz .build-venv .build-bench-venv .baton bench/out
