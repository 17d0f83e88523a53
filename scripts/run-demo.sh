#!/usr/bin/env bash
# make run: kumod on SQLite under a data directory, the demo image (a kernel, the busybox initramfs and a
# root disk, built from Debian packages by scripts/image.sh) registered, one kumo.small instance with a screen running, its console attached. The kernel is
# Debian's stock cloud kernel, except on kvm_pvm hosts, where only the Kumo test kernel runs guest
# userspace (docs/NESTED.md).
#   scripts/run-demo.sh VMM GUEST_DIR BIN_DIR
# KUMO_DATA_DIR (default /var/lib/kumo) and KUMO_LISTEN (default 127.0.0.1:8780) change where kumod lives.
set -euo pipefail
vmm=$(realpath "$1") guest=$2 bin=$(cd "$3" && pwd)
data=${KUMO_DATA_DIR:-/var/lib/kumo}
listen=${KUMO_LISTEN:-127.0.0.1:8780}
export KUMO_ENDPOINT="unix:$data/kumod.sock"
say() { echo "kumo: $*" >&2; }
log() { say "$@"; }
kumo() { "$bin/kumo" "$@"; }
# Tenant networks need ip, nft and dnsmasq (kumod turns networking off without them);
# root disks are qcow2 overlays and imports are converted (qemu-img); key pairs come from ssh-keygen.
. "$(dirname "$0")/apt.sh"
need_tools ip:iproute2 nft:nftables dnsmasq:dnsmasq-base qemu-img:qemu-utils ssh-keygen:openssh-client
need_console_libraries

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

# The demo image, once: the public busybox image (scripts/image.sh busybox: kernel, busybox initramfs and a
# qcow2 root disk, each with its SHA-256), registered as the admin.
if [ -d /sys/module/kvm_pvm ]; then
  image=kumo-busybox what="the Kumo test kernel (Debian's linux-source-6.1 + guest/kernel) + busybox initramfs + root disk"
else
  image=debian-busybox what="linux-image-cloud-amd64 vmlinux + busybox initramfs + root disk"
fi
json() { python3 -c "import json,sys; d=json.load(sys.stdin); $1"; }
image_id=$(kumo image list --output json | json "print(next((i['id'] for i in d['images'] if i['name'] == '$image'), ''))")
if [ -z "$image_id" ]; then
  built=$("$(dirname "$0")/image.sh" busybox)
  # kumod registers image files from its images directory only (never from anywhere root can read).
  install -d -m 700 "$data/images"
  install -m 600 "$built/kernel" "$data/images/$image.vmlinux"
  install -m 600 "$built/initrd" "$data/images/$image.initramfs.cpio"
  install -m 600 "$built/root.qcow2" "$data/images/$image.root.qcow2"
  registered=$(kumo image register "$image" --kernel "$image.vmlinux" --initrd "$image.initramfs.cpio" \
    --root-disk "$image.root.qcow2" --disk-format qcow2 \
    --cmdline "console=tty0 console=ttyS0 reboot=k panic=0 kumo.scenario=report kumo.shell kumo.tty1" --output json)
  image_id=$(echo "$registered" | json "print(d['id'])")
  say "registered image $image ($what; root disk $(echo "$registered" | json "print(d['checksum'])"))"
fi

# A key pair: kumod keeps its public key and puts it in the instance's cloud-init meta-data (the guest's
# init installs it as root's authorized_keys); the private key is shown once, here written to a file.
if ! kumo keypair show demo >/dev/null 2>&1; then
  rm -f "$data/demo.key"
  kumo keypair create demo --private-key-file "$data/demo.key" >/dev/null \
    && say "made key pair demo (private key in $data/demo.key; kumod keeps only the public key)"
fi

# One kumo.small instance named demo on that image: the running one, else a new one.
id=$(kumo instance list --name demo --state running --state starting --state pending --output json \
     | json "print(next((i['id'] for i in d['instances'] if i['image'] in ('$image_id', '$image')), ''))")
if [ -z "$id" ]; then
  id=$(kumo instance run --type kumo.small --image "$image" --name demo --key-pair demo --display 1024x768 --output json \
       | json "print(d['instances'][0]['id'])")
  [ -n "$id" ] || { say "RunInstances failed"; exit 1; }
  say "ran instance $id (kumo.small: 1 vCPU, 2 GiB, a 1024x768 screen) from $image"
fi
for _ in $(seq 1 100); do
  kumo instance show "$id" --output json | grep -q '"state" : "running"' && break
  sleep 0.1
done
# Its NIC: the admin tenant's default network (made at the first run), its address from kumod's IPAM.
nic=$(kumo instance show "$id" --output json | json "n=(d.get('nics') or [None])[0]; print(f\"{n['address']} in network {n['network_name']} ({n['network']})\" if n else '')")
if [ -n "$nic" ]; then
  gw=$(kumo network list --output json | json "print(next((n['gateway'] + ' (' + n['cidr'] + ')' for n in d['networks'] if n['default'] and n['tenant'] == 'admin'), ''))")
  say "eth0 of $id: $nic; gateway and DNS $gw. In the guest: ip addr, ping ${gw%% *}"
  # A security group that lets TCP 80 in, beside the default one, and a host port forwarded to it: the
  # single-host stand-in for a public address (docs/NETWORK.md). Kept across reruns.
  kumo security-group show web >/dev/null 2>&1 || {
    kumo security-group create web --description "the demo's web server" >/dev/null &&
      kumo security-group allow web --protocol tcp --ports 80 --cidr 0.0.0.0/0 >/dev/null
  } || say "could not make the security group web"
  kumo security-group set "$id" default web >/dev/null || say "could not give $id the group web"
  port=18080
  if ! kumo instance show "$id" --output json | grep -q "\"host_port\" : $port"; then
    kumo instance forward "$id" --host-port "$port" --port 80 >/dev/null 2>&1 || port=""
  fi
  host=$(ip -4 -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
  if [ -n "$port" ] && [ -n "$host" ]; then
    say "security groups default + web (TCP 80 from anywhere); host port $port forwarded to its port 80."
    say "In the guest: echo hello > /tmp/index.html; httpd -p 80 -h /tmp. On the host: curl http://$host:$port/"
  fi
  # A load balancer on the network's own address in front of its port 80, with an HTTP health check:
  # its backend is unhealthy until the guest serves, then in rotation (docs/LB.md). Kept across reruns.
  if ! kumo lb show web >/dev/null 2>&1; then
    net=$(kumo instance show "$id" --output json | json "print(d['nics'][0]['network'])")
    { kumo lb create web --network "$net" >/dev/null && kumo lb group create web servers >/dev/null &&
      kumo lb backend add web servers --instance "$id" --port 80 >/dev/null &&
      kumo lb listener add web --port 80 --group servers --check http --check-path / >/dev/null; } ||
      say "could not make the load balancer web"
  fi
  vip=$(kumo lb show web --output json 2>/dev/null | json "print(d['address'])" || true)
  [ -n "$vip" ] && say "load balancer web on $vip:80 (in the network) -> $id:80, HTTP-checked: kumo lb show web; from the host: curl http://$vip/"
else
  say "networking is off in this kumod (see $data/kumod.log): the instance has no NIC"
fi

cat >&2 <<MSG
kumo: kumod's API: http://$listen/v1 and unix:$data/kumod.sock (OpenAPI document at /v1/openapi.yaml)
kumo: admin token: $data/admin.token (the CLI reads it from there); for example:
kumo:   $bin/kumo instance list
kumo:   $bin/kumo instance show $id
kumo:   $bin/kumo instance stop $id        (ACPI power button, forced after 30 s)
kumo:   $bin/kumo console $id              (attach again later)
kumo:   $bin/kumo keypair list             (the console shows nocloud_keys=1: the guest installed it)
kumo:   $bin/kumo instance run-command $id -- uname -a   (the guest agent over virtio-vsock)
kumo:   $bin/kumo image import NAME FILE --format raw|qcow2 --boot-image $image   (your own image)
kumo:   make image NAME=debian-12          (Debian 12 with cloud-init from Debian's packages; docs/IMAGES.md)
kumo:   $bin/kumo instance metrics $id --metric cpu_percent --chart   (monitoring, no agent in the guest)
kumo:   $bin/kumo lb show web              (the load balancer: its backend's health; kumo lb events web)
kumo: the web console: http://$listen/ui/ (log in with the admin token above; charts, the serial console,
kumo:   the Screen tab: the instance's screen in noVNC, a shell on its tty1)
kumo:   $bin/kumo instance vnc $id --listen 5900   (its screen for a desktop VNC viewer on 127.0.0.1:5900)
kumo:   curl -H "Authorization: Bearer \$(cat $data/admin.token)" http://$listen/v1/instances
MSG
if [ -d /sys/module/kvm_pvm ]; then
  cat >&2 <<'MSG'
kumo: this host's KVM emulates guest kernel code (kvm_pvm, nested under a shadow-paging hypervisor), and
kumo: there a system call from guest userspace comes back half-done. The demo therefore boots the Kumo
kumo: test kernel, which finishes it (guest/kernel/patches; the stock Debian kernel stops at init here).
kumo: Its kernel code runs emulated: about 2 minutes to the shell, and each command takes a moment (~1 ms
kumo: per system call, ~1 s per program started). On hardware-assisted KVM the demo boots Debian's stock kernel.
MSG
fi
say "attaching $id's console (Ctrl-] detaches; the instance keeps running)"
exec "$bin/kumo" console "$id"
