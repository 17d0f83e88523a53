import Boot

// The configuration as the JSON file kumo-vmm reads (`--config`): the inverse of `VMConfig.apply(json:)`,
// one set of keys. kumod writes its VMMs' configs with it; `VMConfig.load` of the result gives the same
// config back (a unit test holds the two to it).

extension BucketConfig {
    var json: JSONValue {
        .object([
            ("size", .integer(Int64(size))), ("refill_ms", .integer(Int64(refillMillis))),
            ("one_time_burst", .integer(Int64(oneTimeBurst))),
        ])
    }
}

extension RateLimitConfig {
    var json: JSONValue {
        .object((bandwidth.map { [("bandwidth", $0.json)] } ?? []) + (ops.map { [("ops", $0.json)] } ?? []))
    }
}

extension DiskConfig {
    var json: JSONValue {
        var m: [(String, JSONValue)] = [("path", .string(path))]
        if readOnly { m.append(("read_only", .bool(true))) }
        if format != .raw { m.append(("format", .string(format.rawValue))) }
        if let serial { m.append(("serial", .string(serial))) }
        if let rateLimit { m.append(("rate_limit", rateLimit.json)) }
        return .object(m)
    }
}

extension NetConfig {
    var json: JSONValue {
        var m: [(String, JSONValue)] = [("tap", .string(tap))]
        if let mac { m.append(("mac", .string(MAC.format(mac)))) }
        if let rxRateLimit { m.append(("rx_rate_limit", rxRateLimit.json)) }
        if let txRateLimit { m.append(("tx_rate_limit", txRateLimit.json)) }
        return .object(m)
    }
}

extension BalloonConfig {
    var json: JSONValue {
        .object([
            ("deflate_on_oom", .bool(deflateOnOOM)), ("target_mib", .integer(Int64(targetMiB))),
            ("free_page_reporting", .bool(freePageReporting)),
        ])
    }
}

extension SerialMode {
    public var flag: String {
        switch self {
        case .stdio: return "stdio"
        case .none: return "none"
        case let .file(p): return "file:" + p
        case let .socket(p): return "socket:" + p
        }
    }
}

extension VMConfig {
    /// The config as kumo-vmm's JSON file; keys with their default value are left out.
    public var json: JSONValue {
        let d = VMConfig()
        var m: [(String, JSONValue)] = [("kernel", .string(kernel))]
        if let initrd { m.append(("initrd", .string(initrd))) }
        m.append(("cmdline", .string(cmdline)))
        m.append(("memory_mib", .integer(Int64(memoryMiB))))
        m.append(("vcpus", .integer(Int64(vcpus))))
        if bootProtocol != d.bootProtocol { m.append(("boot_protocol", .string(bootProtocol.rawValue))) }
        if cpuTemplate != d.cpuTemplate { m.append(("cpu_template", .string(cpuTemplate.rawValue))) }
        if !cpuid.isEmpty {
            m.append(
                (
                    "cpuid",
                    .array(
                        cpuid.map { c in
                            .object(
                                [("function", .integer(Int64(c.function)))] + (c.index.map { [("index", .integer(Int64($0)))] } ?? [])
                                    + [("register", .string(c.register.rawValue)), ("clear", .integer(Int64(c.clear))), ("set", .integer(Int64(c.set)))])
                        })
                ))
        }
        m.append(("serial", .string(serial.flag)))
        if let serialSocket { m.append(("serial_socket", .string(serialSocket))) }
        if stats { m.append(("stats", .bool(true))) }
        if !disks.isEmpty { m.append(("disks", .array(disks.map(\.json)))) }
        if let rng { m.append(("rng", rng.rateLimit.map { .object([("rate_limit", $0.json)]) } ?? .bool(true))) }
        if !nets.isEmpty { m.append(("nets", .array(nets.map(\.json)))) }
        if let balloon { m.append(("balloon", balloon.json)) }
        if let vsock { m.append(("vsock", vsock.json)) }
        if let display { m.append(("display", display.json)) }
        if let apiSocket { m.append(("api_socket", .string(apiSocket))) }
        if vcpuAffinity.contains(where: { $0 != nil }) {
            m.append(("vcpu_affinity", .array(vcpuAffinity.map { $0.map { .string($0) } ?? .null })))
        }
        if memoryDedup { m.append(("memory_dedup", .bool(true))) }
        if onReboot != d.onReboot { m.append(("on_reboot", .string(onReboot.rawValue))) }
        if seccomp != d.seccomp { m.append(("seccomp", .string(seccomp.rawValue))) }
        if let jail { m.append(("jail", jail.json)) }
        return .object(m)
    }

    /// Pretty enough for a person opening config.json: one top-level key per line.
    public var jsonText: String {
        guard case let .object(m) = json else { return json.serialized }
        return "{\n" + m.map { "  " + JSONValue.string($0.0).serialized + ": " + $0.1.serialized }.joined(separator: ",\n") + "\n}\n"
    }
}
