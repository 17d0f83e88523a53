# Kumo — the README's two commands: `make run` and `make test`.
SHELL := /bin/bash
GUEST := $(shell scripts/guest.sh path)
# Static-PIE release binary (see the script): nothing for ld.so to do at start, still ASLR.
SWIFT_RELEASE := scripts/swift-release.sh kumo-vmm
VMM := .build/release/kumo-vmm
# At most this many test cases at once. The suites that block (boots, real VMMs) run on threads of
# their own (Tests/TestSupport), so nothing else bounds them; three keep the host's two CPUs busy
# without starving the timing-sensitive tests (CPU caps, KSM) beside the emulated boots.
TEST_WIDTH ?= 3
SWIFT_TEST := SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH=$(TEST_WIDTH) swift test

.PHONY: all build guest image test-images run test check lint unit kvm-tests e2e bench fuzz clean
# The suites that boot Linux guests (minutes each on an emulating host): make test runs them, make check not.
BOOT_SUITES := LinuxBootTests|VirtioBootTests|BalloonReclaimTests|NetworkGuestTests

all: build

build:
	$(SWIFT_RELEASE)

# Guest artifacts from Debian packages (cached outside the repo, rebuilt when inputs change).
guest:
	scripts/guest.sh all

# A public image from Debian packages (docs/IMAGES.md): make image NAME=busybox|debian-12. Cached outside
# the repo and rebuilt only when its inputs change; prints the directory to register it from.
NAME ?= debian-12
image:
	scripts/image.sh $(NAME)

# Builds kumo-vmm, kumod and kumo and the demo guest; starts kumod (SQLite in /var/lib/kumo, API on
# 127.0.0.1:8780 and a Unix socket), registers the demo image (busybox initramfs with the stock Debian
# kernel, or on kvm_pvm hosts the Kumo test kernel), runs one kumo.small instance and attaches its console.
run: build
	swift build --product kumod
	swift build --product kumo
	scripts/guest.sh demo
	scripts/run-demo.sh $(VMM) $(GUEST) .build/debug

# The whole suite: unit, KVM integration (tiny guests), end-to-end Linux boots, kumod's API and CLI,
# CPU caps again with the cpu controller moved to cgroup v2 (where the host's v1 one is unused),
# schemathesis against a running kumod, and a short run of each fuzz target.
test: guest lint
	scripts/test-deps.sh
	swift build --build-tests
	$(SWIFT_RELEASE)
	KUMO_VMM=$(CURDIR)/$(VMM) $(SWIFT_TEST) --skip-build
	KUMO_VMM=$(CURDIR)/$(VMM) scripts/cgroup-v2-check.sh
	scripts/schemathesis.sh 25
	scripts/fuzz.sh 5000

# The public images end to end (docs/IMAGES.md): debian-12 built from Debian's packages, booted by a real
# kumod, its real cloud-init consuming the seed (hostname, key, network, user data), then SSH and
# run-command. Not in make test: where KVM emulates guest kernel code (kvm_pvm) it takes ~25 minutes.
test-images: guest
	scripts/test-deps.sh
	swift build --build-tests
	$(SWIFT_RELEASE)
	KUMO_DEBIAN_IMAGE=$$(scripts/image.sh debian-12) KUMO_VMM=$(CURDIR)/$(VMM) $(SWIFT_TEST) --skip-build --filter DebianImageTests

# The fast inner loop (under 5 minutes on a warm build): the formatter's lint, unit tests, KVM tests with
# tiny guests, and every kumod test that boots no Linux (real kumod, real kumo-vmm, stand-in guests).
check: lint
	scripts/test-deps.sh
	swift build --build-tests
	$(SWIFT_TEST) --skip-build --skip '$(BOOT_SUITES)'

# swift-format with .swift-format (160 columns): the code meets it, and CI holds it to that.
lint:
	swift format lint --strict --recursive Sources Tests Package.swift

# The fuzzer (libFuzzer + ASan) for a long run over its five targets' seed corpora: 11 M inputs in all. The
# virtio devices get 1 M (each input builds a device, its queues and guest memory: ~1 000 inputs/s here),
# the disk reader 1 M (each input a whole disk), the port I/O devices and the two parsers 3 M each (several
# thousand inputs/s).
FUZZ_RUNS ?= virtio=1000000 pio=3000000 control=3000000 config=3000000 disk=1000000
fuzz:
	scripts/fuzz.sh $(FUZZ_RUNS)

unit:
	$(SWIFT_TEST) --filter UnitTests

kvm-tests:
	$(SWIFT_TEST) --filter KVMTests

bench: build
	scripts/bench.sh $(VMM) $(GUEST)

clean:
	rm -rf .build
