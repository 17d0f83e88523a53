// swift-tools-version:6.0
import PackageDescription

// Layers point down only: CKVM → KVM → GuestMemory → Boot → Devices → Virtio → VMM → kumo-vmm.
// Nothing at or below VMM links Foundation. Above it, the control plane: KumoAPI (the REST resources,
// shared by server and CLI) → Kumod (state in SQLite, placement, supervision of kumo-vmm processes,
// the HTTP API) → kumod; KumoAPI → kumo (the CLI). The control plane never links the VMM's modules:
// it drives kumo-vmm as a process, through its command line and control socket. (HostCPUs, a leaf
// without Foundation, parses host CPU lists for both.)
let package = Package(
    name: "Kumo",
    products: [
        .executable(name: "kumo-vmm", targets: ["kumo-vmm"]),
        .library(name: "VMM", targets: ["VMM"]),
        .executable(name: "kumod", targets: ["kumod"]),
        .executable(name: "kumo", targets: ["kumo"]),
    ],
    dependencies: [
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket", from: "2.8.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        // The load balancer's user-space proxy (weighted least connections); Hummingbird runs on it already.
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // The system layer under everything: sockets, threads, taps, errors naming the call (no Foundation).
        .target(name: "CKumoSys"),
        .target(name: "SystemKit", dependencies: ["CKumoSys"]),
        .target(name: "CKVM"),
        .target(name: "KVM", dependencies: ["CKVM", "SystemKit"]),
        .target(name: "GuestMemory"),
        // Host CPU lists ("0-3,6"): kumo-vmm pins vCPU threads with them, kumod validates pinning requests.
        .target(name: "HostCPUs"),
        .target(name: "Boot", dependencies: ["GuestMemory"]),
        .target(name: "Devices", dependencies: ["GuestMemory"]),
        // Disk image formats (no Foundation): qcow2 read, copy-on-write and overlay creation; kumo-vmm's
        // virtio-blk serves them, kumod creates instances' overlays with the same code.
        .target(name: "DiskImage"),
        .target(name: "Virtio", dependencies: ["SystemKit", "GuestMemory", "Devices", "DiskImage"]),
        // RFB 3.8 (VNC): the protocol's messages, Raw/CopyRect/Hextile encoding, keysyms to scan codes (no
        // Foundation, no I/O); kumo-vmm's VNC server drives it.
        .target(name: "RFB"),
        // A host-side virtio driver for tests, the fuzzer and benchmarks (never linked into kumo-vmm).
        .target(name: "VirtioTestDriver", dependencies: ["GuestMemory", "Devices", "Virtio"]),
        // What kumo-vmm and its users agree on (no Foundation): the VM configuration it reads, every
        // control-socket operation as a typed request and reply, one client, the contract's version.
        .target(name: "VMMContract", dependencies: ["SystemKit", "Boot", "HostCPUs", "DiskImage"]),
        // seccomp filters (docs/SANDBOX.md): the allow lists in Sources/VMM/seccomp/ are compiled to BPF at
        // build time by the SeccompFilters plugin (seccomp-compile) and linked into kumo-vmm.
        .target(name: "SeccompBPF"),
        .executableTarget(name: "seccomp-compile", dependencies: ["SeccompBPF"]),
        .plugin(name: "SeccompFilters", capability: .buildTool(), dependencies: ["seccomp-compile"]),
        .target(
            name: "VMM", dependencies: ["SystemKit", "VMMContract", "KVM", "GuestMemory", "Boot", "Devices", "Virtio", "HostCPUs", "RFB"],
            plugins: ["SeccompFilters"]),
        .executableTarget(name: "kumo-vmm", dependencies: ["VMM", "VMMContract"]),
        // libFuzzer target for the virtio device models (scripts/fuzz.sh); a plain build replays inputs.
        .executableTarget(
            name: "kumo-fuzz", dependencies: ["SystemKit", "GuestMemory", "Devices", "Virtio", "VirtioTestDriver", "DiskImage", "Boot", "VMMContract"]),
        .executableTarget(
            name: "kumo-bench", dependencies: ["SystemKit", "VMMContract", "VMM", "KVM", "Boot", "Virtio", "VirtioTestDriver", "DiskImage", "CKumoSys"]),
        .target(name: "KumoAPI"),
        .target(
            name: "Kumod",
            dependencies: [
                "KumoAPI", "SystemKit", "VMMContract", "Boot", "HostCPUs", "DiskImage", .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
            ],
            resources: [.copy("openapi.yaml"), .copy("web")]),
        .executableTarget(name: "kumod", dependencies: ["Kumod", "VMMContract", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "kumo",
            dependencies: [
                "KumoAPI", "SystemKit", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]),
        // Test-only: the `.ownThreads` trait for the suites that block for long (boots, real VMMs).
        .target(name: "TestSupport", dependencies: ["SystemKit"], path: "Tests/TestSupport"),
        .testTarget(
            name: "KumodTests",
            dependencies: [
                "Kumod", "KumoAPI", "VMMContract", "SystemKit", "TestSupport", "DiskImage", .product(name: "HummingbirdTesting", package: "hummingbird"),
            ]),
        .testTarget(
            name: "UnitTests",
            dependencies: [
                "SystemKit", "VMMContract", "KVM", "GuestMemory", "Boot", "Devices", "Virtio", "VirtioTestDriver", "VMM", "DiskImage", "TestSupport", "RFB",
                "SeccompBPF",
            ]),
        .testTarget(name: "KVMTests", dependencies: ["TestSupport", "SystemKit", "VMMContract", "KVM", "GuestMemory", "Boot", "Devices", "VMM"]),
        .testTarget(name: "EndToEndTests", dependencies: ["VMM", "VMMContract", "SystemKit", "TestSupport", "DiskImage"]),
    ],
    swiftLanguageModes: [.v6]
)
