import Foundation

/// Runs a host tool (ip, nft, mkfs, …) to its end: its status and what it printed on stdout (and on
/// stderr too with `mergingStderr`).
@discardableResult
public func hostTool(_ path: String, _ args: [String], mergingStderr: Bool = false) throws -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = mergingStderr ? out : FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}
