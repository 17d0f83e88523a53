#!/usr/bin/env bash
# make run: kumod on SQLite under a data directory, the demo image (stock Debian cloud kernel + busybox
# initramfs, built from Debian packages) registered, one kumo.small instance running, its console attached.
#   scripts/run-demo.sh VMM GUEST_DIR BIN_DIR
# KUMO_DATA_DIR (default /var/lib/kumo) and KUMO_LISTEN (default 127.0.0.1:8780) change where kumod lives.
set -euo pipefail
vmm=$(realpath "$1") guest=$2 bin=$(cd "$3" && pwd)
data=${KUMO_DATA_DIR:-/var/lib/kumo}
listen=${KUMO_LISTEN:-127.0.0.1:8780}
export KUMO_ENDPOINT="unix:$data/kumod.sock"
say() { echo "kumo: $*" >&2; }
kumo() { "$bin/kumo" "$@"; }

# kumod: reuse the one serving this data directory, else start it (it outlives this script; its VMs
# outlive it too).
if ! kumo host capacity --token "$(cat "$data/admin.token" 2>/dev/null || true)" >/dev/null 2>&1; then
  mkdir -p "$data"
  say "starting kumod (data in $data, log in $data/kumod.log)"
  setsid "$bin/kumod" --data-dir "$data" --listen "$listen" --vmm "$vmm" >>"$data/kumod.log" 2>&1 < /dev/null &
  for _ in $(seq 1 100); do
    [ -S "$data/kumod.sock" ] && [ -s "$data/admin.token" ] && kumo host capacity --token "$(cat "$data/admin.token")" >/dev/null 2>&1 && break
    sleep 0.1
  done
  kumo host capacity --token "$(cat "$data/admin.token" 2>/dev/null || true)" >/dev/null || { say "kumod did not come up; see $data/kumod.log"; tail -5 "$data/kumod.log" >&2; exit 1; }
fi
export KUMO_TOKEN=$(cat "$data/admin.token")

# The default image, once.
if ! kumo image list --output json | grep -q '"name" : "debian-busybox"'; then
  kumo image register debian-busybox --kernel "$guest/stock/vmlinux" --initrd "$guest/initramfs/initramfs.cpio" \
    --cmdline "console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=0 kumo.shell" >/dev/null
  say "registered image debian-busybox (linux-image-cloud-amd64 vmlinux + busybox initramfs)"
fi

# One kumo.small instance named demo: the running one, else a new one.
id=$(kumo instance list --name demo --state running --state starting --state pending --output json \
     | sed -n 's/.*"id" : "\(i-[0-9a-f]*\)".*/\1/p' | head -1)
if [ -z "$id" ]; then
  id=$(kumo instance run --type kumo.small --image debian-busybox --name demo --output json \
       | sed -n 's/.*"id" : "\(i-[0-9a-f]*\)".*/\1/p' | head -1)
  [ -n "$id" ] || { say "RunInstances failed"; exit 1; }
  say "ran instance $id (kumo.small: 1 vCPU, 2 GiB)"
fi
for _ in $(seq 1 100); do
  kumo instance show "$id" --output json | grep -q '"state" : "running"' && break
  sleep 0.1
done

cat >&2 <<MSG
kumo: kumod's API: http://$listen/v1 and unix:$data/kumod.sock (OpenAPI document at /v1/openapi.yaml)
kumo: admin token: $data/admin.token (the CLI reads it from there); for example:
kumo:   $bin/kumo instance list
kumo:   $bin/kumo instance show $id
kumo:   $bin/kumo instance stop $id        (ACPI power button, forced after 30 s)
kumo:   $bin/kumo console $id              (attach again later)
kumo:   curl -H "Authorization: Bearer \$(cat $data/admin.token)" http://$listen/v1/instances
MSG
if [ -d /sys/module/kvm_pvm ]; then
  cat >&2 <<'MSG'
kumo: this host's KVM emulates guest kernel code (kvm_pvm, nested under a shadow-paging hypervisor).
kumo: Guest userspace cannot make system calls here, so the busybox shell cannot start: you will see the
kumo: stock Debian kernel boot (several minutes, to "Run /init as init process"); then init dies and the
kumo: kernel panics. On a hardware-assisted KVM host this lands in a busybox shell.
MSG
fi
say "attaching $id's console (Ctrl-] detaches; the instance keeps running)"
exec "$bin/kumo" console "$id"
