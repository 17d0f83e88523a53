// swift-tools-version:6.0
import PackageDescription

// Layers point down only: CKVM → KVM → GuestMemory → Boot → Devices → VMM → kumo-vmm.
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
        .target(name: "VMM", dependencies: ["KVM", "GuestMemory", "Boot", "Devices"]),
        .executableTarget(name: "kumo-vmm", dependencies: ["VMM"]),
        .executableTarget(name: "kumo-bench", dependencies: ["VMM", "KVM", "Boot"]),
        .testTarget(name: "UnitTests", dependencies: ["GuestMemory", "Boot", "Devices", "VMM"]),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "GuestMemory", "Boot", "Devices", "VMM"]),
        .testTarget(name: "EndToEndTests", dependencies: ["VMM"]),
    ],
    swiftLanguageModes: [.v6]
)
