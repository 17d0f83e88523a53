import Foundation
import Testing
import Kumod

/// Which cpu hierarchy kumod uses, from mount tables of the host kinds it meets.
@Suite struct CgroupsTests {
    /// This machine's kind: v1 controllers each on their own, an empty unified hierarchy beside them.
    let hybrid = """
        tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
        cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
        cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
        cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
        cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
        """

    @Test func picksTheHierarchyThatHoldsTheCPUController() {
        // Hybrid, cpu on v1 (the unified hierarchy offers only hugetlb).
        var files = ["/sys/fs/cgroup/unified/cgroup.controllers": "hugetlb\n"]
        var cg = CPUCgroups.choose(mounts: hybrid) { files[$0] }
        #expect(cg?.version == .v1 && cg?.root == "/sys/fs/cgroup/cpu/kumo")
        // The same host once the cpu controller has moved to the unified hierarchy.
        files["/sys/fs/cgroup/unified/cgroup.controllers"] = "cpu hugetlb\n"
        cg = CPUCgroups.choose(mounts: hybrid.replacingOccurrences(of: "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n", with: "")) { files[$0] }
        #expect(cg?.version == .v2 && cg?.root == "/sys/fs/cgroup/unified/kumo")
        // A pure v2 host (systemd's default today).
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0\n"
        cg = CPUCgroups.choose(mounts: v2) { $0 == "/sys/fs/cgroup/cgroup.controllers" ? "cpuset cpu io memory hugetlb pids rdma misc\n" : nil }
        #expect(cg?.version == .v2 && cg?.root == "/sys/fs/cgroup/kumo")
        // v2 without the cpu controller (cpuset is not cpu): nothing to use.
        #expect(CPUCgroups.choose(mounts: v2) { _ in "cpuset io memory pids\n" } == nil)
        // v1 with cpu and cpuacct together, at a path with a space (escaped in the mount table).
        cg = CPUCgroups.choose(mounts: "cgroup /cg/cpu\\040acct cgroup rw,relatime,cpu,cpuacct 0 0\ncgroup /cg/cpuset cgroup rw,cpuset 0 0\n") { _ in nil }
        #expect(cg?.version == .v1 && cg?.root == "/cg/cpu acct/kumo")
        #expect(CPUCgroups.choose(mounts: "cgroup /cg/cpuset cgroup rw,cpuset 0 0\n") { _ in nil } == nil)
    }

    @Test func v2WeightFollowsTheKernelsMappingFromShares() {
        #expect(CPUCgroups.weight(shares: 1024) == 39 && CPUCgroups.weight(shares: 2) == 1 && CPUCgroups.weight(shares: 262144) == 10000)
    }
}
