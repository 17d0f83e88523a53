#!/bin/sh
# Kumo guest scenarios; results go to the serial console as "kumo-result: KEY=VALUE" lines,
# which the host-side tests parse.
result() { echo "kumo-result: $1=$2"; }
case "$1" in
  report|*)
    result cpus "$(grep -c ^processor /proc/cpuinfo)"
    result online "$(cat /sys/devices/system/cpu/online)"
    result mem_total_kib "$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
    result kernel "$(uname -r)"
    ;;
esac
# Boot marker: the value 123 written to the Kumo boot-marker MMIO address (as Firecracker's guests do).
devmem 0xc0000000 8 123
result marker written
