#!/bin/sh
# The busybox image's cloud-init: a NoCloud consumer for kumod's seed (an ISO 9660 disk labelled cidata
# with meta-data, user-data, network-config). It sets the hostname and root's SSH keys from meta-data and runs user-data
# when it is a script ("#!"); cloud-config it leaves to a real cloud-init (the debian image's). The
# network is the DHCP lease dnsmasq gives (the same address network-config names).
result() { echo "kumo-result: $1=$2"; }
mkdir -p /run/cidata
seed=""
for d in /dev/vd?; do
  [ -b "$d" ] || continue
  if mount -t iso9660 -o ro "$d" /run/cidata 2>/dev/null; then
    if [ -f /run/cidata/meta-data ]; then seed=$d; break; fi
    umount /run/cidata
  fi
done
if [ -z "$seed" ]; then
  result nocloud none
  exit 0
fi
name=$(sed -n 's/^local-hostname: *//p' /run/cidata/meta-data)
[ -n "$name" ] && hostname "$name" && result nocloud_hostname "$name"
# public-keys: one quoted authorized_keys line per "  - " item (as kumod writes them) into root's keys.
keys=$(sed -n '/^public-keys:/,/^[^ ]/s/^  - "\(.*\)"$/\1/p' /run/cidata/meta-data)
if [ -n "$keys" ]; then
  mkdir -p /root/.ssh && chmod 700 /root/.ssh
  echo "$keys" > /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys
  result nocloud_keys "$(wc -l < /root/.ssh/authorized_keys) $(sha256sum /root/.ssh/authorized_keys | cut -d' ' -f1)"
fi
first=""
read -r first < /run/cidata/user-data
case "$first" in
  "#!"*)
    cp /run/cidata/user-data /run/user-data
    chmod 700 /run/user-data
    /run/user-data
    result nocloud_script "exit $?" ;;
  "") result nocloud_userdata none ;;
  *) result nocloud_userdata "not a script (${first%% *}): left to cloud-init" ;;
esac
umount /run/cidata
