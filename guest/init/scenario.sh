#!/bin/sh
# Kumo guest scenarios; results go to the serial console as "kumo-result: KEY=VALUE" lines,
# which the host-side tests parse.
result() { echo "kumo-result: $1=$2"; }
# busybox nc's -w bounds only the connect: a peer that accepts and then never answers or closes would
# hold the scenario for ever. Every nc runs under a hard limit, so a scenario always moves on.
tnc() { limit=$1; shift; timeout "$limit" nc "$@"; }
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
    reply=$(echo "hello from kumo guest" | tnc 90 -w 30 "$host" 7777)
    result tcp "$reply"
    # What the guest's TCP and eth0 saw, for a failure's report.
    [ -n "$reply" ] || { grep -A1 '^Tcp:' /proc/net/snmp; grep eth0 /proc/net/dev; }
    result virtio done
    ;;
  vsock)
    # The host runs commands through kumo-agent (started by init, guest/tools/kumo-agent.c) over
    # virtio-vsock; its last one makes /tmp/vsock-done. Up to 5 minutes (each command forks and execs).
    result vsock ready
    i=0
    while [ ! -e /tmp/vsock-done ] && [ "$i" -lt 1500 ]; do sleep 0.2; i=$((i + 1)); done
    if [ -e /tmp/vsock-done ]; then result vsock done; else result vsock timeout; fi
    ;;
  network)
    # A guest on a kumod network (docs/NETWORK.md): its lease from dnsmasq, its gateway, the outside
    # through NAT, its own name in DNS; and what it must not reach: the host's services on the gateway
    # (kumo.hostport) and another tenant's guest (kumo.peer). One program at a time and no pipelines:
    # fresh programs started side by side are where issue 12's crash struck (docs/NESTED.md).
    # Without kumo.gateway, the gateway is the default route DHCP gave (one image serves every network).
    gw=$(arg kumo.gateway); out=$(arg kumo.outside); port=$(arg kumo.hostport); peer=$(arg kumo.peer)
    mkdir -p /tmp
    ip link set eth0 up
    udhcpc -i eth0 -n -q -t 10 -s /etc/udhcpc.script >/dev/null 2>&1
    if [ -z "$gw" ]; then
      ip -4 route show default > /tmp/route
      read -r _ _ gw _ < /tmp/route
    fi
    ip -4 -o addr show dev eth0 > /tmp/addr
    addr=""; read -r _ _ _ addr _ < /tmp/addr
    addr=${addr%/*}
    result dhcp "$addr"
    if ping -c 2 -W 5 "$gw" >/dev/null 2>&1; then result gateway ok; else result gateway failed; fi
    if ping -c 2 -W 5 "$out" >/dev/null 2>&1; then result outside_ping ok; else result outside_ping failed; fi
    echo "hello from kumo guest" > /tmp/hello
    tnc 60 -w 20 "$out" 7777 < /tmp/hello > /tmp/reply
    reply=""; read -r reply < /tmp/reply
    if [ -z "$reply" ]; then
      # Once more: under the test suite's load one CI run saw busybox nc connect and close without
      # sending (not understood yet); a path that is really shut fails again.
      tnc 60 -w 20 "$out" 7777 < /tmp/hello > /tmp/reply
      read -r reply < /tmp/reply
    fi
    result outside_tcp "$reply"
    nslookup "$addr" "$gw" > /tmp/ns 2>&1
    name=""
    while read -r line; do
      case "$line" in *"name = "*) name=${line##*name = }; name=${name%%.*} ;; esac
    done < /tmp/ns
    result dns "$name"
    printf 'GET /v1/health HTTP/1.0\r\n\r\n' > /tmp/request
    tnc 30 -w 5 "$gw" "$port" < /tmp/request > /tmp/response
    reply=""; read -r reply < /tmp/response
    result host_tcp "${reply:-blocked}"
    if [ -n "$peer" ]; then
      if ping -c 2 -W 3 "$peer" >/dev/null 2>&1; then result peer reached; else result peer unreachable; fi
    fi
    result network done
    ;;
  agent)
    # Commands the host-side test types on the serial console, a line each, each answered with
    # kumo-result lines that the test waits for before it types the next: checks where the host acts in
    # between (a server here that it reaches from outside, a peer that must be up first, a stream that
    # it measures). Ends with "done" or at the console's end.
    mkdir -p /tmp/www
    ip -4 -o addr show dev eth0 > /tmp/addr
    addr=""; read -r _ _ _ addr _ < /tmp/addr
    echo "kumo-web ${addr%/*}" > /tmp/www/index.html
    result agent ready
    while read -r cmd a b c; do
      case "$cmd" in
        addr) if ip addr add "$b" dev "$a" && ip link set "$a" up; then result addr "$a=$b"; else result addr "$a=failed"; fi ;;
        serve) if httpd -p "$a" -h /tmp/www; then result serve "$a"; else result serve failed; fi ;;
        fetch)
          # nc, not wget: busybox 1.35's wget -T dies of SIGSEGV at 0 when a connect times out (on
          # the host too: its own bug, not issue 12's).
          printf 'GET / HTTP/1.0\r\n\r\n' > /tmp/request
          : > /tmp/page
          tnc 30 -w 5 "$a" 80 < /tmp/request > /tmp/page
          page=""
          while read -r line; do page=$line; done < /tmp/page
          result fetch "$a=${page:-failed}" ;;
        ping) if ping -c 2 -W 3 "$a" >/dev/null 2>&1; then result ping "$a=ok"; else result ping "$a=failed"; fi ;;
        send)
          # 64 KiB segments however slow the start: TCP sizes them by its rate (a millisecond's worth),
          # and where the guest kernel is emulated its per-frame work would keep that rate low.
          echo 44 > /proc/sys/net/ipv4/tcp_min_tso_segs
          kumo-tcpblast send "$a" "$b" "$c" || result send failed ;;
        recv) kumo-tcpblast recv "$a" || result recv failed ;;
        disk)
          # The root disk (/dev/vda, the instance's copy-on-write overlay): the base image's marker read,
          # a file of this instance's written and synced.
          base=""
          if mount -t ext4 /dev/vda /mnt; then
            read -r base < /mnt/kumo-base.txt
            if echo "$a" > /mnt/kumo-instance.txt && sync && umount /mnt; then result disk "base=${base:-none},wrote"; else result disk failed; fi
          else
            result disk "mount failed"
          fi ;;
        fill)
          # Writes that go on (1 MiB each, synced) while the host kills this VM's kumo-vmm.
          if mount -t ext4 /dev/vda /mnt; then
            (i=0; while [ "$i" -lt 200 ]; do dd if=/dev/zero of=/mnt/fill.$i bs=64k count=16 conv=fsync 2>/dev/null; i=$((i + 1)); done) &
            result fill started
          else
            result fill "mount failed"
          fi ;;
        done) break ;;
        *) result agent "unknown command: $cmd" ;;
      esac
    done
    result agent done
    ;;
  syscalls)
    # System-call semantics (guest/tools/kumo-sysprobe.c); kumo.lstar=ADDR adds the hostile jumps.
    kumo-sysprobe $(arg kumo.lstar)
    ;;
  forkexec)
    # kumo.n command substitutions, each a fork + exec of busybox: how many came back wrong (the 2-vCPU
    # crash in docs/NESTED.md: a fresh exec reading its TLS block back as zeroes).
    n=$(arg kumo.n); ok=0; bad=0; i=0
    while [ "$i" -lt "${n:-100}" ]; do
      v=$(echo x | sed s/x/y/)
      if [ "$v" = y ]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
      i=$((i + 1))
    done
    result forkexec "ok=$ok bad=$bad"
    ;;
  memcheck)
    # On every vCPU at once, kumo.procs fresh processes of kumo.n rounds each: fresh pages written and
    # read back in user mode, a wrong word read again by the kernel (guest/tools/kumo-memcheck.c).
    n=$(arg kumo.n); procs=$(arg kumo.procs)
    for c in $(seq "$(grep -c ^processor /proc/cpuinfo)"); do
      (i=0; while [ "$i" -lt "${procs:-20}" ]; do kumo-memcheck "${n:-20}" 64; i=$((i + 1)); done) &
    done
    wait
    ;;
  tracexec)
    # kumo.n fork + execs of busybox sed under ptrace, on every vCPU at once; a SIGSEGV is examined by
    # the kernel's own read of the word the process read as zero (guest/tools/kumo-tracexec.c).
    for c in $(seq "$(grep -c ^processor /proc/cpuinfo)"); do
      kumo-tracexec "$(arg kumo.n)" /bin/busybox sed s/x/y/ &
    done
    wait
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
