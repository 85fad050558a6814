/// A fixed-bucket histogram in Prometheus's shape (cumulative on output).
public struct Histogram: Sendable, Equatable {
    public let bounds: [Double]
    public private(set) var counts: [UInt64]
    public private(set) var sum: Double = 0
    public private(set) var count: UInt64 = 0

    public init(bounds: [Double]) {
        self.bounds = bounds.sorted()
        self.counts = Array(repeating: 0, count: bounds.count)
    }

    public mutating func observe(_ value: Double) {
        if let index = bounds.firstIndex(where: { value <= $0 }) { counts[index] += 1 }
        sum += value
        count += 1
    }

    /// (upper bound, cumulative count) pairs, ending with +Inf.
    public var cumulative: [(bound: Double, count: UInt64)] {
        var running: UInt64 = 0
        var out: [(Double, UInt64)] = []
        for (bound, count) in zip(bounds, counts) {
            running += count
            out.append((bound, running))
        }
        out.append((.infinity, self.count))
        return out
    }
}
