// The order in which a weighted round robin hands out backends, for a data path that can only count
// (nftables' `numgen inc mod N map {…}`): one cycle of sum(weights) slots (weights reduced by their gcd),
// interleaved the way nginx's smooth weighted round robin does it, so weights 5, 1, 1 give a a b a c a a
// rather than a burst of five a's in a row.

enum WeightedRoundRobin {
    /// Backend indices, one cycle; empty when there are no backends. Weights must be ≥ 1.
    static func cycle(_ weights: [Int]) -> [Int] {
        guard !weights.isEmpty else { return [] }
        let g = weights.reduce(0, Maglev.gcd)
        let w = weights.map { $0 / max(1, g) }
        let total = w.reduce(0, +)
        var current = [Int](repeating: 0, count: w.count)
        var out: [Int] = []
        out.reserveCapacity(total)
        for _ in 0..<total {
            for i in w.indices { current[i] += w[i] }
            var best = 0
            for i in w.indices where current[i] > current[best] { best = i }
            current[best] -= total
            out.append(best)
        }
        return out
    }
}
