// Run-command (ECS Cloud Assistant: RunCommand, SendFile, DescribeInvocationResults): commands and files
// for a running instance's guest agent over virtio-vsock, as invocations with states.

public enum InvocationState: String, Codable, Sendable, CaseIterable {
    case pending, running, success, failed, timeout
    public var finished: Bool { self == .success || self == .failed || self == .timeout }
}

public struct Invocation: Codable, Sendable, Equatable {
    public var id: String
    public var instance: String
    /// "command" or "file".
    public var kind: String
    public var command: String?
    /// A file's path in the guest, and its size.
    public var path: String?
    public var bytes: Int?
    public var timeoutSeconds: Int
    public var state: InvocationState
    /// The command's exit status; a command killed by a signal has `signal` instead.
    public var exitCode: Int?
    public var signal: Int?
    /// What it wrote, as UTF-8 (bytes that are not UTF-8 read as U+FFFD), at most 64 KiB each.
    public var stdout: String?
    public var stderr: String?
    public var stdoutTruncated: Bool?
    public var stderrTruncated: Bool?
    /// Why it failed when the guest did not say (no agent, the instance stopped, kumod restarted).
    public var error: String?
    public var createdAt: String
    public var startedAt: String?
    public var finishedAt: String?
    public init(id: String, instance: String, kind: String, timeoutSeconds: Int, state: InvocationState, createdAt: String) {
        self.id = id; self.instance = instance; self.kind = kind; self.timeoutSeconds = timeoutSeconds; self.state = state
        self.createdAt = createdAt
    }
    enum CodingKeys: String, CodingKey {
        case id, instance, kind, command, path, bytes, state, signal, stdout, stderr, error
        case timeoutSeconds = "timeout_seconds", exitCode = "exit_code", stdoutTruncated = "stdout_truncated"
        case stderrTruncated = "stderr_truncated", createdAt = "created_at", startedAt = "started_at", finishedAt = "finished_at"
    }
}

public struct RunCommandRequest: Codable, Sendable, Equatable {
    /// Run as `/bin/sh -c COMMAND` in the guest: 1 to 16384 bytes of UTF-8.
    public var command: String
    /// 1 to 86400 (default 60): the guest agent kills the command's process group after it.
    public var timeoutSeconds: Int?
    public init(command: String, timeoutSeconds: Int? = nil) { self.command = command; self.timeoutSeconds = timeoutSeconds }
    enum CodingKeys: String, CodingKey { case command, timeoutSeconds = "timeout_seconds" }
}

public struct SendFileRequest: Codable, Sendable, Equatable {
    /// An absolute path in the guest; the file is replaced whole.
    public var path: String
    /// The file's bytes, base64, at most 32 KiB decoded.
    public var content: String
    /// Octal permission bits ("0644", the default).
    public var mode: String?
    public init(path: String, content: String, mode: String? = nil) { self.path = path; self.content = content; self.mode = mode }
}

public struct InvocationList: Codable, Sendable {
    public var invocations: [Invocation]
    public init(invocations: [Invocation]) { self.invocations = invocations }
}
