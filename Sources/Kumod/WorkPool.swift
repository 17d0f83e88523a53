// Blocking work off Swift concurrency's cooperative pool (one thread per CPU: two here). Request
// handlers await a lane of kumod's own OS threads instead of blocking: the store lane for SQLite and
// files, the VMM lane for anything that waits on a VMM (control sockets with their deadlines, a process
// to end). A VMM that does not answer can hold VMM-lane threads only, never the store lane, the event
// loops or the cooperative pool.
import Foundation
import Synchronization
import SystemKit
import KumoAPI

public final class WorkPool: Sendable {
    struct State {
        var jobs: [@Sendable () -> Void] = []
        var stopping = false
    }
    let state = Mutex(State())
    let ready = DispatchSemaphore(value: 0)
    public let name: String
    public let threads: Int

    public init(name: String, threads: Int) {
        self.name = name
        self.threads = threads
        for i in 0..<threads {
            // A pool that cannot start a thread runs with fewer; with none, run() does the work inline.
            try? OSThread.detached(name: "\(name)\(i)") { [self] in loop() }
        }
    }

    /// Ends the threads once the jobs queued before this have run.
    public func shutdown() {
        state.withLock { $0.stopping = true }
        for _ in 0..<threads { ready.signal() }
    }

    func loop() {
        while true {
            ready.wait()
            let job: (@Sendable () -> Void)? = state.withLock { s in s.jobs.isEmpty ? nil : s.jobs.removeFirst() }
            if let job { job() } else if state.withLock({ $0.stopping }) { return }
        }
    }

    func submit(_ job: @escaping @Sendable () -> Void) {
        state.withLock { $0.jobs.append(job) }
        ready.signal()
    }

    /// Runs `body` on one of the pool's threads; the caller's task waits without holding a thread.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws(APIError) -> T) async throws(APIError) -> T {
        let result: Result<T, APIError> = await withCheckedContinuation { c in
            submit { c.resume(returning: Result { () throws(APIError) -> T in try body() }) }
        }
        return try result.get()
    }

    /// Jobs waiting for a thread (for tests and the metrics to come).
    public var queued: Int { state.withLock { $0.jobs.count } }
}
