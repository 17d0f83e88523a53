#!/usr/bin/env bash
# make run: boot the demo guest with the console attached.
set -euo pipefail
vmm=$1 guest=$2
if [ -d /sys/module/kvm_pvm ]; then
  cat >&2 <<'MSG'
kumo: this host's KVM emulates guest kernel code (kvm_pvm, nested under a shadow-paging hypervisor).
kumo: Guest userspace cannot make system calls here, so the busybox shell cannot start: you will see the
kumo: stock Debian kernel boot (several minutes, to "Run /init as init process"); then init dies and the
kumo: kernel panics. Press Ctrl-] to stop kumo-vmm. On a hardware-assisted KVM host this lands
kumo: in a busybox shell.
MSG
fi
exec "$vmm" --kernel "$guest/stock/vmlinux" --initrd "$guest/initramfs/initramfs.cpio" \
  --vcpus 2 --memory 512 --cmdline "console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=0 kumo.shell"
