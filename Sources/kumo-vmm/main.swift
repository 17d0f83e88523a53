import VMMContract
import VMM
#if canImport(Glibc)
import Glibc
#endif

let start = monotonicNanos()
let args = Array(CommandLine.arguments.dropFirst())

let usage = """
    usage: kumo-vmm --kernel PATH [options]        run one VM
           kumo-vmm --config FILE.json [options]   (flags override the file)

      --kernel PATH          ELF vmlinux (PVH or 64-bit Linux boot) or bzImage
      --initrd PATH          initial ramdisk
      --cmdline STRING       kernel command line (default: "\(VMConfig.defaultCmdline)")
      --memory MIB           guest memory in MiB (default 128)
      --vcpus N              number of vCPUs (default 1)
      --boot-protocol P      auto (PVH when the kernel has the note), pvh, linux64
      --cpu-template T       auto (nested when this host's KVM emulates guest kernel code), none, nested
      --cpuid SPEC           mask CPUID: LEAF[.INDEX]:REG:clear=MASK[,set=MASK] (repeatable)
      --serial MODE          stdio (default), none, file:PATH, socket:PATH
      --serial-socket PATH   with file:PATH or none: also serve the console on a Unix socket
                             (one client at a time sees the output live and types input)
      --stats                print exit counts by reason per vCPU on exit
      --disk PATH[,OPTS]     virtio-blk disk from a raw image (repeatable; /dev/vda, vdb, … in order)
                             OPTS: readonly, serial=ID (≤ 20 bytes), bandwidth=BYTES_PER_S, iops=N
      --net tap=NAME[,OPTS]  virtio-net on a tap (created, or attached when it exists; repeatable)
                             OPTS: mac=52:54:00:12:34:56, rx-bandwidth=, tx-bandwidth= (bytes/s), rx-pps=, tx-pps=
      --rng                  virtio-rng fed from the host's getrandom
      --vsock [cid=N,]path=P virtio-vsock (guest CID N, 3 by default), Firecracker's hybrid host side: the
                             host connects to the Unix socket P and writes "CONNECT PORT\n" (answered
                             "OK HOSTPORT\n"); the guest connecting to the host's PORT reaches P_PORT
      --balloon              virtio-balloon (statistics, deflate-on-OOM, free page reporting);
                             guest RAM then goes without transparent huge pages
      --balloon-target MIB   initial balloon size (implies --balloon); --no-deflate-on-oom,
                             --no-free-page-reporting
      --memory-dedup         offer guest RAM to KSM (MADV_MERGEABLE; no THP); off by default (side channels)
      --display WxH          a framebuffer (32 bpp, 320x200 to 2560x1600) the kernel finds in screen_info
                             (efifb / simplefb) and a PS/2 keyboard; the VM boots through the 64-bit
                             protocol (PVH carries no screen_info)
      --vnc-socket PATH      with --display (after it): serve the screen and keyboard over VNC (RFB 3.8,
                             security None) on a Unix socket of mode 0600 (docs/DISPLAY.md)
      --pin VCPU=CPUS        pin a vCPU's thread to host CPUs (a list like 0-1,3; repeatable); the
                             control socket's vcpu.pin changes it at run time
      --on-reboot P          when the guest asks to restart (ACPI or CF9 reset register, i8042 reset
                             line, triple fault, a jump to the reset vector): restart (default: the VM is
                             rebuilt and booted again) or exit (status 3, for a supervisor to decide)
      --seccomp MODE         enforce (the default: a call outside its thread's list kills the VMM with
                             SIGSYS), log (allowed, logged by the kernel) or off (docs/SANDBOX.md)
      --jail UID:GID:DIR     as root: once the VM's files, taps and sockets are open, enter a jail (uid
                             UID, gid GID, no capabilities, rlimits, a mount namespace whose root is an
                             empty tmpfs mounted on DIR/.jail with a /proc of its own; docs/SANDBOX.md)
      --jail-netns NS        with --jail: first enter network namespace NS (a path, e.g. /run/netns/NAME,
                             or new: one of its own), where the host's abstract Unix sockets are not
      --api-socket PATH      control socket: one JSON request per line (docs/CONTROL.md), e.g.
                             {"op":"balloon.set","target_mib":64} or {"op":"power_button"}
      --contract-version     print the version of the contract kumod and kumo-vmm share, and exit
      --help                 this text

    JSON keys: kernel, initrd, cmdline, memory_mib, vcpus, boot_protocol, cpu_template,
    cpuid ([{function, index, register, clear, set}]), serial, stats,
    disks ([{path, read_only, serial, rate_limit}]), nets ([{tap, mac, rx_rate_limit, tx_rate_limit}]),
    rng (true or {rate_limit}), balloon (true or {deflate_on_oom, free_page_reporting, target_mib}), vsock ({cid, path}),
    display ({width, height, vnc_socket}), api_socket,
    serial_socket, memory_dedup, on_reboot, seccomp, jail ({uid, gid, directory, network_namespace?}), vcpu_affinity (["0-1", null, …]: a CPU list or null per vCPU); a rate_limit is
    {"bandwidth": {"size", "refill_ms", "one_time_burst"}, "ops": {…}} (Firecracker's token buckets).
    Virtio devices are virtio-mmio, described in the ACPI DSDT: no kernel parameters needed.
    Exit status: 0 guest powered off (or stopped by SIGTERM/SIGINT), 1 VM failure, 2 bad input,
    3 guest asked to restart (with --on-reboot exit).
    """

// --dump-acpi DIR [--vcpus N]: write the ACPI tables a VM would get (for iasl -d), then exit.
if let i = args.firstIndex(of: "--dump-acpi") {
    guard i + 1 < args.count else { eprint("kumo-vmm: --dump-acpi needs a directory"); exit(2) }
    var vcpus = 1
    if let j = args.firstIndex(of: "--vcpus"), j + 1 < args.count, let n = Int(args[j + 1]), n >= 1 { vcpus = n }
    do { try dumpACPITables(to: args[i + 1], vcpus: vcpus) } catch {
        eprint("kumo-vmm: \(error)")
        exit(1)
    }
    exit(0)
}

if args == ["--contract-version"] {
    print(vmmContractVersion)
    exit(0)
}

if args.contains("--help") || args.contains("-h") {
    print(usage)
    exit(0)
}

let plan: VMPlan
do {
    let config = try VMConfig.parse(arguments: args)
    plan = try VMPlan(config)
} catch {
    eprint("kumo-vmm: \(error)")
    exit(2)
}
do { try Sandbox.prepare(plan.config.seccomp) } catch {
    eprint("kumo-vmm: seccomp: \(error)")
    exit(1)
}
if plan.config.seccomp == .log { eprint("kumo-vmm: seccomp log: calls outside a thread's list are let through (for the kernel's log)") }
exit(runVMM(plan, startNanos: start))
