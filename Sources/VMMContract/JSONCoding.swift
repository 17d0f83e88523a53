/// Codable over `JSONValue`, without Foundation: how the control protocol's typed requests and replies
/// become JSON lines and back. Unknown object keys are ignored when decoding (a newer VMM may say more);
/// a missing or mistyped field is an error naming its path.
public struct JSONValueEncoder {
    public init() {}
    public func encode<T: Encodable>(_ value: T) throws -> JSONValue {
        let e = ValueEncoder(path: [])
        try value.encode(to: e)
        return e.node.value
    }
}

public struct JSONValueDecoder {
    public init() {}
    public func decode<T: Decodable>(_ type: T.Type, from value: JSONValue) throws -> T {
        try T(from: ValueDecoder(value: value, path: []))
    }
}

// MARK: - encoding

/// What an encoder has written so far: a value, or a container still being filled.
final class Node {
    enum Content { case value(JSONValue), object([(String, Node)]), array([Node]) }
    var content: Content = .value(.null)
    var value: JSONValue {
        switch content {
        case let .value(v): return v
        case let .object(m): return .object(m.map { ($0.0, $0.1.value) })
        case let .array(a): return .array(a.map(\.value))
        }
    }
    func member(_ key: String) -> Node {
        if case .value = content { content = .object([]) }
        guard case var .object(m) = content else { return Node() }
        if let i = m.firstIndex(where: { $0.0 == key }) { return m[i].1 }
        let n = Node()
        m.append((key, n))
        content = .object(m)
        return n
    }
    func element() -> Node {
        if case .value = content { content = .array([]) }
        guard case var .array(a) = content else { return Node() }
        let n = Node()
        a.append(n)
        content = .array(a)
        return n
    }
}

struct IndexKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(_ i: Int) { stringValue = String(i); intValue = i }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { self.init(intValue) }
}

struct ValueEncoder: Encoder {
    let node: Node
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    init(path: [any CodingKey], node: Node = Node()) { self.node = node; codingPath = path }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if case .value = node.content { node.content = .object([]) }
        return KeyedEncodingContainer(KeyedEncoder<Key>(node: node, codingPath: codingPath))
    }
    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if case .value = node.content { node.content = .array([]) }
        return UnkeyedEncoder(node: node, codingPath: codingPath)
    }
    func singleValueContainer() -> any SingleValueEncodingContainer { SingleEncoder(node: node, codingPath: codingPath) }
}

/// The JSON form of a leaf value, or nil when `value` is not a leaf (it encodes itself).
func leaf<T: Encodable>(_ value: T) -> JSONValue? {
    switch value {
    case let v as Bool: return .bool(v)
    case let v as String: return .string(v)
    case let v as Double: return .number(v)
    case let v as Float: return .number(Double(v))
    case let v as Int: return .integer(Int64(v))
    case let v as Int8: return .integer(Int64(v))
    case let v as Int16: return .integer(Int64(v))
    case let v as Int32: return .integer(Int64(v))
    case let v as Int64: return .integer(v)
    case let v as UInt: return Int64(exactly: v).map { .integer($0) } ?? .number(Double(v))
    case let v as UInt8: return .integer(Int64(v))
    case let v as UInt16: return .integer(Int64(v))
    case let v as UInt32: return .integer(Int64(v))
    case let v as UInt64: return Int64(exactly: v).map { .integer($0) } ?? .number(Double(v))
    case let v as JSONValue: return v
    default: return nil
    }
}

func encodeValue<T: Encodable>(_ value: T, into node: Node, path: [any CodingKey]) throws {
    if let l = leaf(value) { node.content = .value(l); return }
    try value.encode(to: ValueEncoder(path: path, node: node))
}

struct KeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let node: Node
    let codingPath: [any CodingKey]
    mutating func encodeNil(forKey key: Key) throws { node.member(key.stringValue).content = .value(.null) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try encodeValue(value, into: node.member(key.stringValue), path: codingPath + [key])
    }
    // Optionals left out stay out (no "key": null), as Foundation's JSONEncoder does.
    mutating func encodeIfPresent<T: Encodable>(_ value: T?, forKey key: Key) throws {
        if let value { try encode(value, forKey: key) }
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        let n = node.member(key.stringValue)
        n.content = .object([])
        return KeyedEncodingContainer(KeyedEncoder<NestedKey>(node: n, codingPath: codingPath + [key]))
    }
    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let n = node.member(key.stringValue)
        n.content = .array([])
        return UnkeyedEncoder(node: n, codingPath: codingPath + [key])
    }
    mutating func superEncoder() -> any Encoder { ValueEncoder(path: codingPath, node: node.member("super")) }
    mutating func superEncoder(forKey key: Key) -> any Encoder { ValueEncoder(path: codingPath + [key], node: node.member(key.stringValue)) }
}

struct UnkeyedEncoder: UnkeyedEncodingContainer {
    let node: Node
    let codingPath: [any CodingKey]
    var count: Int { if case let .array(a) = node.content { return a.count }; return 0 }
    mutating func encodeNil() throws { node.element().content = .value(.null) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        let path = codingPath + [IndexKey(count)]
        try encodeValue(value, into: node.element(), path: path)
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let n = node.element()
        n.content = .object([])
        return KeyedEncodingContainer(KeyedEncoder<NestedKey>(node: n, codingPath: codingPath))
    }
    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let n = node.element()
        n.content = .array([])
        return UnkeyedEncoder(node: n, codingPath: codingPath)
    }
    mutating func superEncoder() -> any Encoder { ValueEncoder(path: codingPath, node: node.element()) }
}

struct SingleEncoder: SingleValueEncodingContainer {
    let node: Node
    let codingPath: [any CodingKey]
    mutating func encodeNil() throws { node.content = .value(.null) }
    mutating func encode<T: Encodable>(_ value: T) throws { try encodeValue(value, into: node, path: codingPath) }
}

// MARK: - decoding

func pathString(_ path: [any CodingKey]) -> String {
    path.isEmpty ? "the value" : path.map { $0.intValue.map { "[\($0)]" } ?? "." + $0.stringValue }.joined().drop { $0 == "." }.description
}

func mismatch(_ type: Any.Type, _ value: JSONValue, _ path: [any CodingKey]) -> DecodingError {
    .typeMismatch(type, .init(codingPath: path, debugDescription: "\(pathString(path)): expected \(type), found \(value.typeName)"))
}

struct ValueDecoder: Decoder {
    let value: JSONValue
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    init(value: JSONValue, path: [any CodingKey]) { self.value = value; codingPath = path }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case let .object(m) = value else { throw mismatch([String: JSONValue].self, value, codingPath) }
        return KeyedDecodingContainer(KeyedDecoder<Key>(members: m, codingPath: codingPath))
    }
    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case let .array(a) = value else { throw mismatch([JSONValue].self, value, codingPath) }
        return UnkeyedDecoder(items: a, codingPath: codingPath)
    }
    func singleValueContainer() throws -> any SingleValueDecodingContainer { SingleDecoder(value: value, codingPath: codingPath) }
}

/// Decodes a leaf type from `v`, or nil when T is not a leaf (it decodes itself).
func decodeLeaf<T: Decodable>(_ type: T.Type, _ v: JSONValue, _ path: [any CodingKey]) throws -> T? {
    func integer<I: FixedWidthInteger>(_ t: I.Type) throws -> I {
        switch v {
        case let .integer(n): if let x = I(exactly: n) { return x }
        case let .number(d): if let x = I(exactly: d) { return x }
        default: break
        }
        throw mismatch(t, v, path)
    }
    switch type {
    case is Bool.Type:
        guard case let .bool(b) = v else { throw mismatch(Bool.self, v, path) }
        return b as? T
    case is String.Type:
        guard case let .string(s) = v else { throw mismatch(String.self, v, path) }
        return s as? T
    case is Double.Type:
        switch v {
        case let .number(d): return d as? T
        case let .integer(n): return Double(n) as? T
        default: throw mismatch(Double.self, v, path)
        }
    case is Int.Type: return try integer(Int.self) as? T
    case is Int32.Type: return try integer(Int32.self) as? T
    case is Int64.Type: return try integer(Int64.self) as? T
    case is UInt.Type: return try integer(UInt.self) as? T
    case is UInt8.Type: return try integer(UInt8.self) as? T
    case is UInt16.Type: return try integer(UInt16.self) as? T
    case is UInt32.Type: return try integer(UInt32.self) as? T
    case is UInt64.Type: return try integer(UInt64.self) as? T
    case is JSONValue.Type: return v as? T
    default: return nil
    }
}

func decodeValue<T: Decodable>(_ type: T.Type, _ v: JSONValue, _ path: [any CodingKey]) throws -> T {
    if let x = try decodeLeaf(type, v, path) { return x }
    return try T(from: ValueDecoder(value: v, path: path))
}

struct KeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let members: [(String, JSONValue)]
    let codingPath: [any CodingKey]
    var allKeys: [Key] { members.compactMap { Key(stringValue: $0.0) } }
    func find(_ key: Key) -> JSONValue? { members.first { $0.0 == key.stringValue }?.1 }
    func contains(_ key: Key) -> Bool { find(key) != nil }
    func need(_ key: Key) throws -> JSONValue {
        guard let v = find(key) else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "\(pathString(codingPath + [key])): missing"))
        }
        return v
    }
    func decodeNil(forKey key: Key) throws -> Bool { find(key).map { $0 == .null } ?? true }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try decodeValue(type, try need(key), codingPath + [key]) }
    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        guard let v = find(key), v != .null else { return nil }
        return try decodeValue(type, v, codingPath + [key])
    }
    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try ValueDecoder(value: try need(key), path: codingPath + [key]).container(keyedBy: type)
    }
    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try ValueDecoder(value: try need(key), path: codingPath + [key]).unkeyedContainer()
    }
    func superDecoder() throws -> any Decoder { ValueDecoder(value: find(Key(stringValue: "super")!) ?? .null, path: codingPath) }
    func superDecoder(forKey key: Key) throws -> any Decoder { ValueDecoder(value: try need(key), path: codingPath + [key]) }
}

struct UnkeyedDecoder: UnkeyedDecodingContainer {
    let items: [JSONValue]
    let codingPath: [any CodingKey]
    var currentIndex = 0
    var count: Int? { items.count }
    var isAtEnd: Bool { currentIndex >= items.count }
    init(items: [JSONValue], codingPath: [any CodingKey]) { self.items = items; self.codingPath = codingPath }
    mutating func next() throws -> (JSONValue, [any CodingKey]) {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(JSONValue.self, .init(codingPath: codingPath, debugDescription: "\(pathString(codingPath)): too few elements"))
        }
        defer { currentIndex += 1 }
        return (items[currentIndex], codingPath + [IndexKey(currentIndex)])
    }
    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, items[currentIndex] == .null else { return false }
        currentIndex += 1
        return true
    }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let (v, p) = try next()
        return try decodeValue(type, v, p)
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let (v, p) = try next()
        return try ValueDecoder(value: v, path: p).container(keyedBy: type)
    }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let (v, p) = try next()
        return try ValueDecoder(value: v, path: p).unkeyedContainer()
    }
    mutating func superDecoder() throws -> any Decoder {
        let (v, p) = try next()
        return ValueDecoder(value: v, path: p)
    }
}

struct SingleDecoder: SingleValueDecodingContainer {
    let value: JSONValue
    let codingPath: [any CodingKey]
    func decodeNil() -> Bool { value == .null }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try decodeValue(type, value, codingPath) }
}

/// A `JSONValue` field passes through the coders as it is (free-form parts of a reply).
extension JSONValue: Codable {
    public init(from decoder: any Decoder) throws {
        guard let d = decoder as? ValueDecoder else {
            throw DecodingError.typeMismatch(
                JSONValue.self, .init(codingPath: decoder.codingPath, debugDescription: "JSONValue decodes only with JSONValueDecoder"))
        }
        self = d.value
    }
    public func encode(to encoder: any Encoder) throws {
        guard let e = encoder as? ValueEncoder else {
            throw EncodingError.invalidValue(self, .init(codingPath: encoder.codingPath, debugDescription: "JSONValue encodes only with JSONValueEncoder"))
        }
        e.node.content = .value(self)
    }
}
