// The compute service: instance types, images and instances, asynchronous like EC2 — a request
// records what is wanted and returns; kumod's own tasks start and watch the VMMs and move each
// instance through pending → starting → running → stopping → stopped (or error), with reasons.
import Foundation
import KumoAPI
import GRDB
import Synchronization
import HostCPUs
import VMMContract

public final class Service: Sendable {
    public let store: Store
    public let launcher: any VMMLauncher
    public let host: HostResources
    public let dataDir: URL
    /// Where image files live (kumod's data dir's images/ unless set): an image is registered only from
    /// files under it, never from anywhere a root process can read.
    public let imagesDir: URL
    /// How long a guest gets to power off after the ACPI power button before its VMM is stopped by force.
    public let stopTimeout: Duration
    /// KSM for instances with memory dedup: the trust domain and the tuner.
    public let ksm: KSMTuner
    /// How often a guest may reboot before kumod stops it (Reboots.swift).
    public let rebootLimit: RebootLimit
    /// Tenant networks on this host (Networks.swift); nil: networking is off.
    public let networks: NetworkHost?
    /// The balloon pass: its own queue (it waits on guests' statistics), what it saw, what it decided.
    let balloonQueue = DispatchQueue(label: "kumod.balloons")
    let balloonState = Mutex<(seen: [HostBalloons.Seen], free: Double?, decisions: [String])>(([], nil, []))
    /// Held across a policy update's read, merge and write: two admins changing different fields at the
    /// same moment both land (each merges onto the other's result, never onto the same stale base).
    let balloonPolicyUpdates = Mutex(())
    /// How a stop went, by instance id, for the reason recorded when its VMM is gone.
    let stopNotes = Mutex<[String: String]>([:])
    /// Live VMM processes by instance id (kumod's view; the store has the same pids).
    let processes = Mutex<[String: VMMProcess]>([:])
    /// Supervision (spawning, reaping, stop timeouts) runs on its own serial queue, never on Swift
    /// concurrency's cooperative pool: it makes blocking system calls (posix_spawn, waitpid, /proc reads),
    /// and it must keep running when the pool's few threads are busy or blocked.
    let supervisor = DispatchQueue(label: "kumod.supervisor")
    /// Launch preparation (copying a root disk can take seconds): concurrent, beside the supervisor.
    let preparation = DispatchQueue(label: "kumod.prepare", attributes: .concurrent)
    /// Set by `shutdown`: no launch starts after it.
    let closing = Atomic<Bool>(false)
    /// The monitor's generation: a new start (or a stop) ends the loop of the previous one.
    let monitorGeneration = Atomic<Int>(0)
    /// Request handlers' blocking work (WorkPool.swift): the store lane, and the lane for waiting on VMMs.
    public let storeLane = WorkPool(name: "kumod-store", threads: 4)
    public let vmmLane = WorkPool(name: "kumod-vmm", threads: 16)
    /// Image uploads and conversions (qemu-img on gigabytes): never on the store lane.
    public let imageLane = WorkPool(name: "kumod-image", threads: 2)
    /// How long an invocation waits for the guest agent to answer (a guest still booting), in seconds.
    public let agentWaitSeconds = Atomic<Int>(120)
    /// Instances whose disk an image is being made from: not started or deleted meanwhile.
    let imaging = Mutex<Set<String>>([])
    /// Samples of instances and the host, their time series (Monitoring.swift).
    public let monitoring: Monitoring
    /// One-time tickets for instances' screens (VNCTickets.swift).
    public let vncTickets = VNCTickets()
    /// The load balancers' health checks, proxies and drains (LoadBalancerRunner.swift).
    public let balancing = LoadBalancing()

    public init(
        store: Store, launcher: any VMMLauncher, host: HostResources = .detect(), dataDir: URL,
        stopTimeout: Duration = .seconds(30), ksm: KSMTuner = KSMTuner(), rebootLimit: RebootLimit = .standard, imagesDir: URL? = nil,
        networks: NetworkHost? = nil, metricsInterval: Double = 10
    ) {
        self.networks = networks
        monitoring = Monitoring(dataDir: dataDir, interval: metricsInterval)
        self.store = store; self.launcher = launcher; self.host = host; self.dataDir = dataDir; self.stopTimeout = stopTimeout
        self.imagesDir = imagesDir ?? dataDir.appendingPathComponent("images")
        self.ksm = ksm; self.rebootLimit = rebootLimit
        // What a previous kumod was carrying out lost its connection with it.
        try? store.failUnfinishedInvocations(reason: "kumod restarted while it ran")
    }

    /// Ends supervision: no launch starts from now on, the queued work drains, and with `endingVMMs`
    /// every VMM this kumod runs is ended (tests end what they start; kumod itself leaves VMs running).
    public func shutdown(endingVMMs: Bool) {
        closing.store(true, ordering: .sequentiallyConsistent)
        stopMonitor()
        stopSampling()
        stopLoadBalancing()
        // A launch already past its check hands work to the preparation queue, which hands it back.
        supervisor.sync {}
        preparation.sync(flags: .barrier) {}
        supervisor.sync {}
        guard endingVMMs else { return }
        for (id, p) in processes.withLock({ $0 }) { endVMM(id, p) }
    }

    deinit {
        storeLane.shutdown()
        vmmLane.shutdown()
        imageLane.shutdown()
    }

    // MARK: settings

    public func policy() -> PlacementPolicy {
        guard let s = try? store.setting("placement"), let p = try? JSONDecoder().decode(PlacementPolicy.self, from: Data(s.utf8)) else {
            return PlacementPolicy()
        }
        return p
    }

    public func setPolicy(_ p: PlacementPolicy, by who: Store.Principal) throws(APIError) {
        try requireAdmin(who)
        guard p.cpuAllocationRatio > 0, p.cpuAllocationRatio <= 64, p.ramAllocationRatio > 0, p.ramAllocationRatio <= 16,
            (0..<host.memoryMiB).contains(p.reservedHostMemoryMiB), (0..<host.logicalCPUs).contains(p.reservedCPUs)
        else {
            throw APIError(
                code: "invalid_argument",
                message:
                    "cpu_allocation_ratio must be in (0, 64], ram_allocation_ratio in (0, 16], reserved_cpus from 0 to \(host.logicalCPUs - 1), "
                    + "reserved_host_memory_mib from 0 to \(host.memoryMiB - 1)"
            )
        }
        let data = try! JSONEncoder().encode(p)
        try wrap { try store.setSetting("placement", String(decoding: data, as: UTF8.self)) }
    }

    func holders() throws(APIError) -> [Placement.Holder] {
        try wrap { try store.read(Store.capacityHolders) }
    }

    public func capacity() throws(APIError) -> Capacity {
        Placement.capacity(host: host, policy: policy(), holders: try holders())
    }

    /// Capacity with how many more of each type fit, counting the measured KSM and balloon savings too.
    public func capacityReport() throws(APIError) -> Capacity {
        let ksmPages = ksm.read("pages_sharing") ?? 0
        let balloons = balloonState.withLock { $0.seen.reduce(0) { $0 + $1.actualMiB } }
        return Placement.withFits(try capacity(), types: try types(), ksmSavedMiB: ksmPages * 4 / 1024, balloonReclaimedMiB: balloons)
    }

    // MARK: errors

    @discardableResult
    func wrap<T>(_ body: () throws -> T) throws(APIError) -> T {
        do { return try body() } catch let e as APIError { throw e } catch {
            throw APIError(code: "internal", message: "state store: \(error)")
        }
    }

    func requireAdmin(_ who: Store.Principal) throws(APIError) {
        guard who.admin else { throw APIError(code: "forbidden", message: "this needs an admin token") }
    }
}
