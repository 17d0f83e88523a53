import Foundation
import Testing

/// A task executor that runs every job it is given on a new thread of its own.
///
/// Swift's global concurrent executor has as many threads as the host has CPUs (two here). A
/// synchronous test that blocks for minutes (a Linux boot, a VMM under kumod) holds one of them, and
/// two such tests hold them all: every other task waits, including the test harness's own — a test
/// that finished in 7 s was then reported past its 5 min time limit, and the in-process kumod's async
/// tests crawled. Jobs sent here never take a thread from that pool, and the task stays the same task
/// (its task-locals, so `#expect` still knows which test it is in).
final class ThreadPerJobExecutor: TaskExecutor {
    static let shared = ThreadPerJobExecutor()

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job), executor = asUnownedTaskExecutor()
        let thread = Thread { job.runSynchronously(on: executor) }
        thread.stackSize = 8 << 20
        thread.start()
    }
}

/// The trait behind `.ownThreads`: each test case of the suite (or the test) runs with a preference
/// for `ThreadPerJobExecutor`, so its blocking waits block a thread that nothing else needs.
public struct OwnThreadsTrait: SuiteTrait, TestTrait, TestScoping {
    public var isRecursive: Bool { true }

    public func provideScope(
        for test: Test, testCase: Test.Case?,
        performing function: @Sendable () async throws -> Void
    ) async throws {
        guard testCase != nil else { return try await function() }
        try await withTaskExecutorPreference(ThreadPerJobExecutor.shared) { try await function() }
    }
}

extension Trait where Self == OwnThreadsTrait {
    /// For tests that block for long (guest boots, real VMMs, child processes): they run on threads of
    /// their own, never on the few threads Swift concurrency shares between all tests.
    public static var ownThreads: Self { OwnThreadsTrait() }
}
