// Monitoring through the REST API (as ECS DescribeInstanceMonitorData): an instance's or the host's
// series, at a period of 10 s, 60 s or 1 h, each point the average and maximum over its bucket.
import Foundation

public struct MetricPoint: Codable, Sendable, Equatable {
    /// The bucket's start (Unix seconds), its average and maximum over the samples in it.
    public var time: Int
    public var avg: Double
    public var max: Double
    public init(time: Int, avg: Double, max: Double) { self.time = time; self.avg = avg; self.max = max }
}

/// `GET …/metrics` without `metric`: what can be asked for.
public struct MetricCatalogue: Codable, Sendable, Equatable {
    /// The instance's id; nil for the host.
    public var instance: String?
    public var metrics: [String]
    public var periods: [Int]
    /// How often kumod samples (seconds).
    public var intervalSeconds: Double
    public init(instance: String?, metrics: [String], periods: [Int], intervalSeconds: Double) {
        self.instance = instance; self.metrics = metrics; self.periods = periods; self.intervalSeconds = intervalSeconds
    }
    enum CodingKeys: String, CodingKey { case instance, metrics, periods, intervalSeconds = "interval_seconds" }
}

/// `GET …/metrics?metric=M&period=P&start=S&end=E`: the points of M whose buckets start in [S, E].
public struct MetricData: Codable, Sendable, Equatable {
    public var instance: String?
    public var metric: String
    public var period: Int
    public var start: Int
    public var end: Int
    public var points: [MetricPoint]
    public init(instance: String?, metric: String, period: Int, start: Int, end: Int, points: [MetricPoint]) {
        self.instance = instance; self.metric = metric; self.period = period; self.start = start; self.end = end; self.points = points
    }
}

public enum MetricQueryRules {
    public static let periods = [10, 60, 3600]
    public static let maxPoints = 1440
}
