// swift-tools-version:6.0
import PackageDescription

// Layers point down only: CKVM → KVM → GuestMemory → Boot → Devices → Virtio → VMM → kumo-vmm.
// Nothing at or below VMM links Foundation.
let package = Package(
    name: "Kumo",
    products: [
        .executable(name: "kumo-vmm", targets: ["kumo-vmm"]),
        .library(name: "VMM", targets: ["VMM"]),
    ],
    targets: [
        .target(name: "CKVM"),
        .target(name: "KVM", dependencies: ["CKVM"]),
        .target(name: "GuestMemory"),
        .target(name: "Boot", dependencies: ["GuestMemory"]),
        .target(name: "Devices", dependencies: ["GuestMemory"]),
        .target(name: "Virtio", dependencies: ["CKVM", "GuestMemory", "Devices"]),
        // A host-side virtio driver for tests, the fuzzer and benchmarks (never linked into kumo-vmm).
        .target(name: "VirtioTestDriver", dependencies: ["GuestMemory", "Devices", "Virtio"]),
        .target(name: "VMM", dependencies: ["KVM", "GuestMemory", "Boot", "Devices", "Virtio"]),
        .executableTarget(name: "kumo-vmm", dependencies: ["VMM"]),
        // libFuzzer target for the virtio device models (scripts/fuzz.sh); a plain build replays inputs.
        .executableTarget(name: "kumo-fuzz", dependencies: ["GuestMemory", "Devices", "Virtio", "VirtioTestDriver"]),
        .executableTarget(name: "kumo-bench", dependencies: ["VMM", "KVM", "Boot", "Virtio", "VirtioTestDriver"]),
        .testTarget(name: "UnitTests", dependencies: ["GuestMemory", "Boot", "Devices", "Virtio", "VirtioTestDriver", "VMM"]),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "GuestMemory", "Boot", "Devices", "VMM"]),
        .testTarget(name: "EndToEndTests", dependencies: ["VMM"]),
    ],
    swiftLanguageModes: [.v6]
)
