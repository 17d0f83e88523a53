// An instance's screen in the browser (as ECS DescribeInstanceVncUrl): a one-time WebSocket URL, valid
// briefly, for the instance's owner; the WebSocket carries RFB (VNC) to the instance's VMM.

public struct VNCTicket: Codable, Sendable, Equatable {
    public var instance: String
    /// The WebSocket's path on kumod ("/v1/vnc/TICKET"): usable once, before `expiresAt`, with no token.
    public var url: String
    public var expiresAt: String
    public var width: Int
    public var height: Int
    public init(instance: String, url: String, expiresAt: String, width: Int, height: Int) {
        self.instance = instance; self.url = url; self.expiresAt = expiresAt; self.width = width; self.height = height
    }
    enum CodingKeys: String, CodingKey { case instance, url, width, height, expiresAt = "expires_at" }
}

public enum DisplaySize {
    /// "1024x768" → (1024, 768) within 320x200 to 2560x1600, else nil.
    public static func parse(_ s: String) -> (width: Int, height: Int)? {
        let p = s.split(separator: "x", omittingEmptySubsequences: false)
        guard p.count == 2, p.allSatisfy({ (1...4).contains($0.count) && $0.allSatisfy(\.isASCIIDigit) }), let w = Int(p[0]), let h = Int(p[1]),
            (320...2560).contains(w), (200...1600).contains(h)
        else { return nil }
        return (w, h)
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}
