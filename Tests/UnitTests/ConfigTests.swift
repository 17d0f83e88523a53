import Testing
@testable import VMM
@testable import VMMContract
import Boot

@Suite struct JSONTests {
    @Test func parsesAndSerialises() throws {
        let v = try JSONParser.parse(#" { "a": [1, 2.5, -3e2, true, false, null], "b": "x\"\n\u00e9\ud83d\ude00" } "#)
        guard case let .object(m) = v else { Issue.record("not an object"); return }
        #expect(m[0].0 == "a" && m[0].1 == .array([.number(1), .number(2.5), .number(-300), .bool(true), .bool(false), .null]))
        #expect(m[1].1 == .string("x\"\né😀"))
        #expect(try JSONParser.parse(v.serialized) == v)
    }

    @Test func rejectsMalformedInput() {
        for bad in [
            "", "{", "{\"a\" 1}", "[1,]", "{\"a\":1,\"a\":2}", "tru", "\"\\x\"", "1 2", "\"a\u{01}\"",
            String(repeating: "[", count: 100) + String(repeating: "]", count: 100),
            // Surrogates that make no pair (the first trapped the parser: found by kumo-fuzz's control target).
            #"{"op":"translate","vcpu":2,"a\uDada\uDadad810"}"#, #""\ud83d""#, #""\ud83dx""#, #""\ude00""#, #""\ud83d\u0041""#,
        ] {
            #expect(throws: JSONError.self, "\(bad)") { try JSONParser.parse(bad) }
        }
        do { _ = try JSONParser.parse("{\n  \"a\": ?\n}") } catch { #expect(error.line == 2 && error.column == 8) }
    }
}

@Suite struct CPUListTests {
    @Test func parsesLinuxCPUListsWithinTheHost() throws {
        #expect(try CPUList.parse("0-3,6", limit: 8).get() == [0, 1, 2, 3, 6])
        #expect(try CPUList.parse("5,1-2,2", limit: 8).get() == [1, 2, 5])
        for bad in ["", "a", "1-", "-1", "3-1", "1,,2", "0-3;4", "1 2"] {
            #expect(throws: CPUListError.self, "\(bad)") { try CPUList.parse(bad, limit: 8).get() }
        }
        #expect(throws: CPUListError(reason: "CPU 8 does not exist: this host has CPUs 0-7")) { try CPUList.parse("0,8", limit: 8).get() }
        #expect(CPUList.format([0, 1, 2, 3, 6, 8, 9]) == "0-3,6,8-9")
        #expect(CPUList.format([4]) == "4")
    }

    @Test func pinFlagsAndJSON() throws {
        let c = try VMConfig.parse(arguments: ["--kernel", "/k", "--vcpus", "2", "--pin", "1=0"])
        #expect(c.vcpuAffinity == [nil, "0"])
        var j = VMConfig()
        try j.apply(json: JSONParser.parse(#"{"kernel": "/k", "vcpus": 2, "vcpu_affinity": ["0", null]}"#))
        #expect(j.vcpuAffinity == ["0", nil])
        #expect(throws: ConfigError.self) { try VMConfig.parse(arguments: ["--kernel", "/k", "--pin", "x=1"]) }
        var tooMany = VMConfig(); tooMany.kernel = "/etc/hostname"; tooMany.vcpuAffinity = ["0", "0"]
        #expect(throws: ConfigError.invalid("vcpu_affinity", "2 entries for 1 vCPU(s)")) { try tooMany.validate(hostMemoryBytes: 1 << 34) }
        var noSuchCPU = VMConfig(); noSuchCPU.kernel = "/etc/hostname"; noSuchCPU.vcpuAffinity = ["4095"]
        #expect(throws: ConfigError.self) { try noSuchCPU.validate(hostMemoryBytes: 1 << 34) }
    }
}

@Suite struct ConfigTests {
    @Test func flagsOverrideDefaults() throws {
        let c = try VMConfig.parse(arguments: [
            "--kernel", "/k", "--memory", "256", "--vcpus", "2", "--cpu-template", "nested",
            "--boot-protocol", "linux64", "--serial", "socket:/tmp/s", "--stats",
            "--cpuid", "1:ecx:clear=0x2000", "--cpuid", "7.0:ebx:clear=0x1,set=0x2",
        ])
        #expect(c.kernel == "/k" && c.memoryMiB == 256 && c.vcpus == 2 && c.stats)
        #expect(c.cpuTemplate == .nested && c.bootProtocol == .linux64 && c.serial == .socket("/tmp/s"))
        #expect(
            c.cpuid == [
                CPUIDModifier(function: 1, register: .ecx, clear: 0x2000),
                CPUIDModifier(function: 7, index: 0, register: .ebx, clear: 1, set: 2),
            ])
    }

    @Test func jsonConfigAndItsErrors() throws {
        var c = VMConfig()
        try c.apply(
            json: JSONParser.parse(#"{"kernel": "/k", "vcpus": 4, "memory_mib": 512, "cpuid": [{"function": 1, "register": "ecx", "clear": "0x2000"}]}"#))
        #expect(c.vcpus == 4 && c.memoryMiB == 512 && c.cpuid.count == 1)
        var d = VMConfig()
        #expect(throws: ConfigError.self) { try d.apply(json: JSONParser.parse(#"{"kernel": "/k", "memroy_mib": 1}"#)) }
        #expect(throws: ConfigError.self) { try d.apply(json: JSONParser.parse(#"{"vcpus": "2"}"#)) }
        #expect(throws: ConfigError.self) { try d.apply(json: JSONParser.parse(#"{"vcpus": 1.5}"#)) }
        #expect(throws: ConfigError.self) { try d.apply(json: JSONParser.parse(#"[1]"#)) }
        #expect(throws: ConfigError.self) { try d.apply(json: JSONParser.parse(#"{"cpuid": [{"function": 1}]}"#)) }
        #expect(throws: ConfigError.self) { try d.apply(json: JSONParser.parse(#"{"serial": "tcp:1"}"#)) }
    }

    /// The jail's network namespace (docs/SANDBOX.md): kumod writes it, kumo-vmm reads it back; the flags in
    /// either order; a descriptor inherited as /proc/self/fd/N is the VMM's to close.
    @Test func jailsNetworkNamespace() throws {
        var c = VMConfig()
        c.jail = JailConfig(uid: 3_000_001, gid: 3_000_001, directory: "/d", networkNamespace: "/proc/self/fd/4")
        var again = VMConfig()
        try again.apply(json: JSONParser.parse(c.jsonText))
        #expect(again.jail == c.jail && again.jail?.inheritedNamespaceFD == 4)
        #expect(JailConfig(uid: 1, gid: 1, directory: "/d", networkNamespace: "/run/netns/x").inheritedNamespaceFD == nil)
        #expect(JailConfig(uid: 1, gid: 1, directory: "/d", networkNamespace: "/proc/self/fd/1").inheritedNamespaceFD == nil)
        for order in [["--jail", "7:8:/d", "--jail-netns", "new"], ["--jail-netns", "new", "--jail", "7:8:/d"]] {
            let f = try VMConfig.parse(arguments: ["--kernel", "/k"] + order)
            #expect(f.jail == JailConfig(uid: 7, gid: 8, directory: "/d", networkNamespace: "new"), "\(order)")
        }
        #expect(throws: ConfigError.self) { try VMConfig.parse(arguments: ["--kernel", "/k", "--jail-netns", "new"]) }
        var d = VMConfig()
        #expect(throws: ConfigError.self) { try d.apply(json: JSONParser.parse(#"{"jail": {"uid": 7, "gid": 8, "directory": "/d", "netns": "new"}}"#)) }
    }

    @Test func virtioDevicesFromJSONAndFlags() throws {
        var c = VMConfig()
        try c.apply(
            json: JSONParser.parse(
                #"""
                {"kernel": "/k", "rng": {"rate_limit": {"ops": {"size": 10, "refill_ms": 100}}},
                 "disks": [{"path": "/a.img", "read_only": true, "serial": "s1",
                            "rate_limit": {"bandwidth": {"size": 1048576, "refill_ms": 1000, "one_time_burst": 4096}}},
                           {"path": "/b.img"}, {"path": "/c.qcow2", "format": "qcow2"}],
                 "nets": [{"tap": "kt0", "mac": "52:54:00:00:00:01", "tx_rate_limit": {"ops": {"size": 100}}}]}
                """#))
        #expect(
            c.disks == [
                DiskConfig(
                    path: "/a.img", readOnly: true, serial: "s1",
                    rateLimit: RateLimitConfig(bandwidth: BucketConfig(size: 1 << 20, refillMillis: 1000, oneTimeBurst: 4096))),
                DiskConfig(path: "/b.img"), DiskConfig(path: "/c.qcow2", format: .qcow2),
            ])
        // What kumod writes, kumo-vmm reads the same (the format only when not raw).
        var again = VMConfig()
        try again.apply(json: JSONParser.parse(c.jsonText))
        #expect(again.disks == c.disks)
        #expect(!c.jsonText.contains("\"format\": \"raw\""))
        #expect(c.rng == RngConfig(rateLimit: RateLimitConfig(ops: BucketConfig(size: 10, refillMillis: 100))))
        #expect(c.nets.count == 1 && c.nets[0].tap == "kt0" && c.nets[0].mac == [0x52, 0x54, 0, 0, 0, 1])
        #expect(c.nets[0].txRateLimit == RateLimitConfig(ops: BucketConfig(size: 100)))
        let f = try VMConfig.parse(arguments: [
            "--kernel", "/k", "--disk", "/x.img,readonly,serial=abc,bandwidth=1000,iops=50", "--disk", "/y.qcow2,format=qcow2",
            "--net", "tap=kt1,rx-pps=5", "--rng",
        ])
        #expect(
            f.disks == [
                DiskConfig(
                    path: "/x.img", readOnly: true, serial: "abc",
                    rateLimit: RateLimitConfig(bandwidth: BucketConfig(size: 1000), ops: BucketConfig(size: 50))),
                DiskConfig(path: "/y.qcow2", format: .qcow2),
            ])
        #expect(throws: ConfigError.self) { try VMConfig.parse(arguments: ["--kernel", "/k", "--disk", "/y.img,format=vmdk"]) }
        #expect(f.nets[0].rxRateLimit == RateLimitConfig(ops: BucketConfig(size: 5)))
        #expect(f.rng == RngConfig())
        var b = VMConfig()
        try b.apply(json: JSONParser.parse(#"{"kernel": "/k", "balloon": {"deflate_on_oom": false, "target_mib": 32}, "api_socket": "/tmp/x.sock"}"#))
        #expect(b.balloon == BalloonConfig(deflateOnOOM: false, targetMiB: 32) && b.apiSocket == "/tmp/x.sock")
        try b.apply(json: JSONParser.parse(#"{"balloon": {"free_page_reporting": false}}"#))
        #expect(b.balloon == BalloonConfig(freePageReporting: false))
        let nb = try VMConfig.parse(arguments: ["--kernel", "/k", "--balloon", "--no-free-page-reporting"])
        #expect(nb.balloon == BalloonConfig(freePageReporting: false))
        // vsock: flag and JSON the same, written back as read, its CID and path checked.
        let v = try VMConfig.parse(arguments: ["--kernel", "/k", "--vsock", "cid=7,path=/run/v.sock"])
        #expect(v.vsock == VsockConfig(cid: 7, path: "/run/v.sock"))
        var vj = VMConfig()
        try vj.apply(json: JSONParser.parse(v.jsonText))
        #expect(vj.vsock == v.vsock)
        #expect(try VMConfig.parse(arguments: ["--vsock", "path=/v"]).vsock == VsockConfig(cid: 3, path: "/v"))
        for bad in [["--vsock", "cid=2,path=/v"], ["--vsock", "cid=3"], ["--vsock", "path=/" + String(repeating: "a", count: 107)]] {
            #expect(throws: ConfigError.self, "\(bad)") { try VMConfig.parse(arguments: ["--kernel", "/k"] + bad).validate(hostMemoryBytes: 1 << 34) }
        }
        #expect(throws: ConfigError.self) { try VMConfig.parse(arguments: ["--vsock", "port=1,path=/v"]) }
        var same = try VMConfig.parse(arguments: ["--kernel", "/k", "--vsock", "path=/s", "--api-socket", "/s"])
        #expect(throws: ConfigError.self) { try same.validate(hostMemoryBytes: 1 << 34) }
        same.apiSocket = nil
        try same.validate(hostMemoryBytes: 1 << 34)
        var d = VMConfig()
        for bad in [
            #"{"vsock": {"cid": "3", "path": "/v"}}"#, #"{"vsock": {"path": "/v", "port": 1}}"#, #"{"vsock": {"path": "/v", "cid": -1}}"#, #"{"vsock": "/v"}"#,
            #"{"disks": [{"path": "/a", "cache": "none"}]}"#, #"{"disks": [{}]}"#, #"{"disks": "/a"}"#,
            #"{"nets": [{"tap": "t", "mac": "ff:ff:ff:ff:ff:ff"}]}"#, #"{"nets": [{"mac": "52:54:00:00:00:01"}]}"#,
            #"{"rng": {"rate": 1}}"#, #"{"rng": 3}"#,
            #"{"disks": [{"path": "/a", "rate_limit": {"bandwidth": {"size": 0}}}]}"#,
            #"{"disks": [{"path": "/a", "rate_limit": {"iops": {"size": 1}}}]}"#,
            #"{"disks": [{"path": "/a", "format": "vmdk"}]}"#, #"{"disks": [{"path": "/a", "format": 2}]}"#,
            #"{"balloon": {"target": 1}}"#, #"{"balloon": {"free_page_reporting": 1}}"#, #"{"balloon": 1}"#, #"{"api_socket": 3}"#,
        ] {
            #expect(throws: ConfigError.self, "\(bad)") { try d.apply(json: JSONParser.parse(bad)) }
        }
    }

    @Test func validationBeforeAnyVM() throws {
        var c = VMConfig()
        #expect(throws: ConfigError.self) { try c.validate(hostMemoryBytes: 1 << 34) }  // no kernel
        c.kernel = "/k"
        try c.validate(hostMemoryBytes: 1 << 34)
        c.vcpus = 0
        #expect(throws: ConfigError.invalid("vcpus", "must be at least 1, got 0")) { try c.validate(hostMemoryBytes: 1 << 34) }
        c.vcpus = 1; c.memoryMiB = 8
        #expect(throws: ConfigError.self) { try c.validate(hostMemoryBytes: 1 << 34) }
        c.memoryMiB = 32 << 10
        #expect(throws: ConfigError.self) { try c.validate(hostMemoryBytes: 16 << 30) }
        #expect(throws: ConfigError.self) { try VMConfig.parse(arguments: ["--kernel"]) }
        #expect(throws: ConfigError.self) { try VMConfig.parse(arguments: ["--frobnicate"]) }
        #expect(throws: ConfigError.self) { try VMConfig.parse(arguments: ["--memory", "lots"]) }
        #expect(throws: ConfigError.self) { try VMConfig.parse(arguments: ["--cpuid", "1:ecx"]) }
    }

    @Test func planRejectsFilesThatAreNotKernels() throws {
        var c = VMConfig()
        c.kernel = "/proc/self/status"
        #expect(throws: ConfigError.self) {
            try VMPlan(c, host: HostKVM(kind: .vmx, twoDimensionalPaging: true, emulatesGuestKernel: false), hostMemory: 1 << 34)
        }
        c.kernel = "/nonexistent/vmlinux"
        #expect(throws: ConfigError.self) { try VMPlan(c, hostMemory: 1 << 34) }
    }

    @Test func hostDetection() {
        let h = HostKVM.detect()
        // This reads the real /sys/module; on every host the answer is self-consistent.
        if h.kind == .pvm { #expect(h.emulatesGuestKernel && !h.twoDimensionalPaging) }
        if h.kind == .vmx || h.kind == .svm { #expect(!h.emulatesGuestKernel) }
        #expect(HostKVM.detect(sysModule: "/nonexistent").kind == .unknown)
    }
}
