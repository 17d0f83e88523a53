import Testing

@testable import Kumod

/// The source-IP scheduler's table (issue 19, point 2): balanced, weighted, the same in every run, and
/// disturbed by about 1/N when one of N backends goes or comes.
struct MaglevTests {
    static func names(_ n: Int) -> [(name: String, weight: Int)] { (0..<n).map { ("10.0.1.\($0 + 2):80", 1) } }

    static func counts(_ t: [Int], _ n: Int) -> [Int] {
        var c = [Int](repeating: 0, count: n)
        for i in t { c[i] += 1 }
        return c
    }

    @Test func everySlotIsTakenAndTheShareIsEven() {
        let t = Maglev.table(Self.names(10))
        #expect(t.count == Maglev.defaultSize && !t.contains(-1))
        let c = Self.counts(t, 10)
        // Maglev's turns give each backend ⌊M/N⌋ or ⌈M/N⌉ slots.
        #expect(c.max()! - c.min()! <= 1, "\(c)")
        #expect(Maglev.table(Self.names(10)) == t, "the same backends, the same table")
        #expect(Maglev.table([]).isEmpty)
    }

    @Test func weightsSetTheShare() {
        let t = Maglev.table([("a", 1), ("b", 3), ("c", 2)])
        let c = Self.counts(t, 3)
        let m = Double(Maglev.defaultSize)
        for (i, w) in [1.0, 3.0, 2.0].enumerated() {
            #expect(abs(Double(c[i]) / m - w / 6) < 0.001, "backend \(i): \(c[i]) of \(Int(m))")
        }
    }

    @Test(arguments: [5, 10, 50, 100])
    func removingOrAddingOneMovesAboutOneNth(n: Int) {
        let all = Self.names(n + 1)
        let before = Maglev.table(Array(all.prefix(n)))
        // One removed (the third): its slots must move, and a few others do (Maglev trades a little
        // disruption for balance: the paper measures under twice the minimum with M = 65537).
        var less = Array(all.prefix(n))
        let gone = less.remove(at: 2)
        let after = Maglev.table(less)
        var moved = 0
        for (s, b) in before.enumerated() where all[b].name != less[after[s]].name { moved += 1 }
        let fraction = Double(moved) / Double(before.count)
        #expect(fraction >= 1 / Double(n) * 0.99, "at least the removed backend's slots (\(gone.name))")
        #expect(fraction <= 1 / Double(n) * 2, "\(n) backends, one removed: \(fraction) of the slots moved")
        // One added.
        let grown = Maglev.table(all)
        moved = 0
        for (s, b) in before.enumerated() where all[b].name != all[grown[s]].name { moved += 1 }
        let added = Double(moved) / Double(before.count)
        print("MaglevTests: \(n) backends: one removed moved \(fraction), one added \(added) (1/N = \(1 / Double(n)))")
        #expect(added <= 1 / Double(n + 1) * 2 && added >= 1 / Double(n + 1) * 0.99, "\(n) backends, one added: \(added) moved")
    }
}

/// The weighted round robin's cycle (issue 19, point 2): each backend as often as its weight, spread out.
struct WeightedRoundRobinTests {
    @Test func sharesFollowWeightsAndAreInterleaved() {
        #expect(WeightedRoundRobin.cycle([5, 1, 1]) == [0, 0, 1, 0, 2, 0, 0])
        #expect(WeightedRoundRobin.cycle([1, 1, 1]) == [0, 1, 2], "equal weights: plain round robin")
        #expect(WeightedRoundRobin.cycle([20, 40]) == [1, 0, 1], "weights reduced by their gcd")
        #expect(WeightedRoundRobin.cycle([]).isEmpty)
        let c = WeightedRoundRobin.cycle([3, 7, 10])
        #expect(c.count == 20)
        for (i, w) in [3, 7, 10].enumerated() { #expect(c.filter { $0 == i }.count == w) }
        // Never more than two of the heaviest in a row here (10 of 20).
        var run = 0, longest = 0
        for b in c + c { run = b == 2 ? run + 1 : 0; longest = max(longest, run) }
        #expect(longest <= 2, "\(c)")
    }
}
