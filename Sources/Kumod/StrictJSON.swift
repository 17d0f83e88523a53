// Request bodies are read strictly: a duplicate key or a field the request type does not have is an
// error, never ignored (`"cpu-policy": "dedicated"` must not quietly run a shared instance).
import Foundation
import KumoAPI
import VMMContract

enum StrictJSON {
    /// The body as a JSON tree; a duplicate key anywhere is refused (JSONParser's rule), with its place.
    static func tree(_ body: Data) throws(APIError) -> JSONValue {
        do { return try JSONParser.parse(String(decoding: body, as: UTF8.self)) } catch {
            throw APIError(code: "invalid_argument", message: "body is not valid JSON: \(error.description)")
        }
    }

    /// The first field in `sent` that decoding into a type and encoding it again did not keep: a field the
    /// type has no key for (a known optional field sent as null is dropped too, and allowed). Arrays are
    /// compared element by element, objects key by key.
    static func unknownField(sent: JSONValue, kept: JSONValue, path: String = "") -> String? {
        switch (sent, kept) {
        case let (.object(s), .object(k)):
            for (key, value) in s {
                let here = path.isEmpty ? key : path + "." + key
                guard let mine = k.first(where: { $0.0 == key })?.1 else {
                    if case .null = value { continue }
                    return here
                }
                if let deeper = unknownField(sent: value, kept: mine, path: here) { return deeper }
            }
            return nil
        case let (.array(s), .array(k)):
            for (i, value) in s.enumerated() where i < k.count {
                if let deeper = unknownField(sent: value, kept: k[i], path: "\(path)[\(i)]") { return deeper }
            }
            return nil
        default:
            return nil
        }
    }

    /// Refuses `body` if it has a duplicate key or a field `value` (decoded from it) has no place for.
    static func check<T: Encodable>(_ body: Data, decoded value: T) throws(APIError) {
        let sent = try tree(body)
        guard let kept = try? JSONValueEncoder().encode(value) else { return }
        if let field = unknownField(sent: sent, kept: kept) {
            throw APIError(code: "invalid_argument", message: "unknown field \"\(Validate.escaped(field))\" (see /v1/openapi.yaml for this request's fields)")
        }
    }
}
