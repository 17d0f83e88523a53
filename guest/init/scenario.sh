#!/bin/sh
# Kumo guest scenarios; results go to the serial console as "kumo-result: KEY=VALUE" lines,
# which the host-side tests parse.
result() { echo "kumo-result: $1=$2"; }
arg() { sed -n "s/.*$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }
case "$1" in
  virtio)
    # Userspace over virtio: a file on the ext4 disk, a DHCP lease, ping and TCP to the host.
    host=$(arg kumo.host)
    mkdir -p /mnt
    if mount -t ext4 /dev/vda /mnt && echo "written by the kumo guest" > /mnt/kumo-userspace.txt && sync && umount /mnt; then
      result disk written
    else
      result disk failed
    fi
    ip link set eth0 up
    udhcpc -i eth0 -n -q -t 10 -s /etc/udhcpc.script >/dev/null 2>&1
    addr=$(ip -4 addr show dev eth0 | awk '/inet / {print $2}')
    result dhcp "${addr%/*}"
    if ping -c 3 -W 5 "$host" >/dev/null 2>&1; then result ping ok; else result ping failed; fi
    reply=$(echo "hello from kumo guest" | nc -w 30 "$host" 7777)
    result tcp "$reply"
    # What the guest's TCP and eth0 saw, for a failure's report.
    [ -n "$reply" ] || { grep -A1 '^Tcp:' /proc/net/snmp; grep eth0 /proc/net/dev; }
    result virtio done
    ;;
  syscalls)
    # System-call semantics (guest/tools/kumo-sysprobe.c); kumo.lstar=ADDR adds the hostile jumps.
    kumo-sysprobe $(arg kumo.lstar)
    ;;
  syscost)
    # What a system call and a process cost here (make bench compares the host's figures).
    kumo-syscost getpid "$(arg kumo.getpids)"
    kumo-syscost spawn "$(arg kumo.spawns)"
    ;;
  report|*)
    result cpus "$(grep -c ^processor /proc/cpuinfo)"
    result online "$(cat /sys/devices/system/cpu/online)"
    result mem_total_kib "$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
    result kernel "$(uname -r)"
    ;;
esac
