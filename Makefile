# Kumo — the README's two commands: `make run` and `make test`.
SHELL := /bin/bash
GUEST := $(shell scripts/guest.sh path)
# Static-PIE release binary (see the script): nothing for ld.so to do at start, still ASLR.
SWIFT_RELEASE := scripts/swift-release.sh kumo-vmm
VMM := .build/release/kumo-vmm

.PHONY: all build guest run test unit kvm-tests e2e bench fuzz clean

all: build

build:
	$(SWIFT_RELEASE)

# Guest artifacts from Debian packages (cached outside the repo, rebuilt when inputs change).
guest:
	scripts/guest.sh all

# Builds kumo-vmm and the demo guest, then boots the stock Debian kernel with the busybox initramfs
# on the serial console (stdin/stdout). (The Kumo test kernel is built by `make guest` / `make test`.)
run: build
	scripts/guest.sh stock
	scripts/guest.sh initramfs
	scripts/run-demo.sh $(VMM) $(GUEST)

# The whole suite: unit, KVM integration (tiny guests), end-to-end Linux boots, kumod's API and CLI,
# schemathesis against a running kumod, and a short virtio fuzz run.
test: guest
	swift build --build-tests
	$(SWIFT_RELEASE)
	KUMO_VMM=$(CURDIR)/$(VMM) swift test --skip-build
	scripts/schemathesis.sh 25
	scripts/fuzz.sh 5000

# The virtio fuzzer (libFuzzer + ASan) for a long run: FUZZ_RUNS inputs from the seed corpus.
FUZZ_RUNS ?= 1000000
fuzz:
	scripts/fuzz.sh $(FUZZ_RUNS)

unit:
	swift test --filter UnitTests

kvm-tests:
	swift test --filter KVMTests

bench: build
	scripts/bench.sh $(VMM) $(GUEST)

clean:
	rm -rf .build
