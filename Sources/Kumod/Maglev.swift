// Maglev consistent hashing (Eisenbud et al., NSDI 2016) for the load balancer's source-IP scheduler: a
// lookup table of a prime size M, each slot naming a backend, which the data path indexes with a hash of
// the client's address. Each backend walks the table in an order of its own (an offset and a skip from two
// hashes of its name) and the backends take turns claiming their next free slot, in proportion to their
// weights. Removing or adding one backend changes about 1/N of the slots, so about 1/N of the clients move;
// the rest keep their backend. The hashes are fixed (FNV-1a), never Swift's per-process seeded Hasher: the
// same backends give the same table in every kumod, across restarts.

enum Maglev {
    /// The table size: a prime well above the number of backends a group may have (MaglevTests: 100).
    static let defaultSize = 65_537

    static func fnv1a(_ s: String, seed: UInt64) -> UInt64 {
        var h = 0xCBF2_9CE4_8422_2325 ^ seed
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        // A final mix: FNV's low bits alone follow the last bytes too closely for names that differ at the end.
        h ^= h >> 33
        h = h &* 0xFF51_AFD7_ED55_8CCD
        h ^= h >> 33
        return h
    }

    /// The table for `backends` (distinct names, each with a weight ≥ 1): slot → index into `backends`.
    /// Empty when there are none.
    static func table(_ backends: [(name: String, weight: Int)], size m: Int = defaultSize) -> [Int] {
        guard !backends.isEmpty, m > 1 else { return [] }
        let offsets = backends.map { Int(fnv1a($0.name, seed: 0x6D61_676C) % UInt64(m)) }
        let skips = backends.map { Int(fnv1a($0.name, seed: 0x6C65_7621) % UInt64(m - 1)) + 1 }
        var next = [Int](repeating: 0, count: backends.count)
        var table = [Int](repeating: -1, count: m)
        var filled = 0
        // Weighted turns: in each round a backend of weight w claims w slots (weights reduced by their gcd).
        let g = backends.map(\.weight).reduce(0, gcd)
        let turns = backends.map { max(1, $0.weight / max(1, g)) }
        while filled < m {
            for i in backends.indices {
                for _ in 0..<turns[i] where filled < m {
                    var slot = (offsets[i] + next[i] * skips[i]) % m
                    while table[slot] >= 0 {
                        next[i] += 1
                        slot = (offsets[i] + next[i] * skips[i]) % m
                    }
                    table[slot] = i
                    next[i] += 1
                    filled += 1
                }
            }
        }
        return table
    }

    static func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
}
