// Alarm rules on monitoring series (as CloudMonitor's): a metric of an instance (or of the host, admins),
// above or below a threshold for a while; kumod evaluates them at every sample and keeps each one's
// firing/resolved history.

public struct Alarm: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var tenant: String
    /// The instance watched; nil: the host.
    public var instance: String?
    public var metric: String
    /// "above" or "below".
    public var comparison: String
    public var threshold: Double
    /// How long every point must be past the threshold before the alarm fires.
    public var durationSeconds: Int
    /// "insufficient_data" (no points yet), "ok" or "firing".
    public var state: String
    public var stateSince: String
    /// The newest point's value at the last evaluation.
    public var lastValue: Double?
    public var createdAt: String
    /// Transitions, newest first (in `show` only; the last 100 are kept).
    public var history: [AlarmEvent]?
    public init(
        id: String, name: String, tenant: String, instance: String?, metric: String, comparison: String, threshold: Double, durationSeconds: Int,
        state: String, stateSince: String, lastValue: Double?, createdAt: String, history: [AlarmEvent]? = nil
    ) {
        self.id = id; self.name = name; self.tenant = tenant; self.instance = instance; self.metric = metric; self.comparison = comparison
        self.threshold = threshold; self.durationSeconds = durationSeconds; self.state = state; self.stateSince = stateSince
        self.lastValue = lastValue; self.createdAt = createdAt; self.history = history
    }
    enum CodingKeys: String, CodingKey {
        case id, name, tenant, instance, metric, comparison, threshold, state, history
        case durationSeconds = "duration_seconds", stateSince = "state_since", lastValue = "last_value", createdAt = "created_at"
    }
}

public struct AlarmEvent: Codable, Sendable, Equatable {
    /// The state entered: "firing", "ok" (resolved, or first seen well) or "insufficient_data".
    public var state: String
    public var value: Double?
    public var at: String
    public var message: String
    public init(state: String, value: Double?, at: String, message: String) { self.state = state; self.value = value; self.at = at; self.message = message }
}

public struct CreateAlarmRequest: Codable, Sendable, Equatable {
    public var name: String
    /// The instance's id; left out: the host (admins).
    public var instance: String?
    public var metric: String
    public var comparison: String
    public var threshold: Double
    public var durationSeconds: Int
    public init(name: String, instance: String?, metric: String, comparison: String, threshold: Double, durationSeconds: Int) {
        self.name = name; self.instance = instance; self.metric = metric; self.comparison = comparison; self.threshold = threshold
        self.durationSeconds = durationSeconds
    }
    enum CodingKeys: String, CodingKey { case name, instance, metric, comparison, threshold, durationSeconds = "duration_seconds" }
}

public struct AlarmList: Codable, Sendable, Equatable {
    public var alarms: [Alarm]
    public init(alarms: [Alarm]) { self.alarms = alarms }
}
