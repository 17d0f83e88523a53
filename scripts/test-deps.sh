#!/usr/bin/env bash
# The host tools `make test` calls, from Debian's packages (a fresh machine has not all of them; CI once
# skipped the ACPI disassembly test for want of iasl): binutils (as, ld: tiny guests), acpica-tools
# (iasl: the DSDT's AML disassembled), e2fsprogs (mkfs.ext4, debugfs, dumpe2fs, e2fsck: disk images),
# iproute2 (ip: bridges and taps), tcpdump (a capture when a network test fails), nftables (nft: kumod's
# firewall and NAT table), dnsmasq-base (dnsmasq: DHCP and DNS of tenant networks), qemu-utils (qemu-img, qemu-io: qcow2 overlays
# checked, written and read by QEMU's own code; imports converted), xorriso and genisoimage (isoinfo), which
# read kumod's cloud-init seeds back, openssh-client (ssh-keygen: kumod's key pairs, and fingerprints checked), prometheus (promtool checks kumod's
# exposition; a real Prometheus server scrapes it), the web console's libraries (libjs-chart.js, node-xterm), and
# chromium with chromium-driver and Selenium (PyPI) to drive the console headless.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "test-deps: $*" >&2; }
. "$here/scripts/apt.sh"
need_tools as:binutils ld:binutils iasl:acpica-tools mkfs.ext4:e2fsprogs debugfs:e2fsprogs dumpe2fs:e2fsprogs \
  e2fsck:e2fsprogs sfdisk:fdisk ip:iproute2 nft:nftables conntrack:conntrack dnsmasq:dnsmasq-base qemu-img:qemu-utils qemu-io:qemu-utils xorriso:xorriso isoinfo:genisoimage \
  ssh-keygen:openssh-client promtool:prometheus prometheus:prometheus chromium:chromium chromedriver:chromium-driver
need_console_libraries
python3 -c 'import selenium' 2>/dev/null || { log "installing selenium (PyPI)"; python3 -m pip install -q selenium >&2; }
