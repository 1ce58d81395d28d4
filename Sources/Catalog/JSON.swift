/// A JSON value that remembers the line it started on, so catalog problems can be
/// reported as `path:line: reason`. Foundation's decoders give a coding path but no line.
public struct JSONNode: Sendable {
    public enum Value: Sendable {
        case object([String: JSONNode], keys: [String])
        case array([JSONNode])
        case string(String)
        case number(Double)
        case bool(Bool)
        case null
    }
    public var value: Value
    public var line: Int

    public init(value: Value, line: Int) {
        self.value = value
        self.line = line
    }

    public var typeName: String {
        switch value {
        case .object: return "an object"
        case .array: return "an array"
        case .string: return "a string"
        case .number: return "a number"
        case .bool: return "a boolean"
        case .null: return "null"
        }
    }
}

public struct JSONSyntaxError: Error, Sendable {
    public var line: Int
    public var reason: String
}

/// RFC 8259 parser over UTF-8 bytes. `comments`: also skip `//` comments to the end of a line wherever
/// whitespace may be (the configuration file's, so a packaged one can carry commented defaults; catalog files stay
/// plain JSON).
public struct JSONParser {
    private let bytes: [UInt8]
    private let comments: Bool
    private var i = 0
    private var line = 1
    private var depth = 0

    public static func parse(_ bytes: [UInt8], comments: Bool = false) throws(JSONSyntaxError) -> JSONNode {
        var p = JSONParser(bytes: bytes, comments: comments)
        p.skipSpace()
        let v = try p.value()
        p.skipSpace()
        guard p.i == bytes.count else { throw p.fail("unexpected text after the JSON value") }
        return v
    }

    private init(bytes: [UInt8], comments: Bool) { (self.bytes, self.comments) = (bytes, comments) }

    private func fail(_ reason: String) -> JSONSyntaxError { JSONSyntaxError(line: line, reason: reason) }

    private mutating func skipSpace() {
        while i < bytes.count {
            switch bytes[i] {
            case 0x0A: line += 1; i += 1
            case 0x20, 0x09, 0x0D: i += 1
            case UInt8(ascii: "/") where comments && i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "/"):
                while i < bytes.count, bytes[i] != 0x0A { i += 1 }
            default: return
            }
        }
    }

    private mutating func expect(_ word: String) throws(JSONSyntaxError) {
        for b in word.utf8 {
            guard i < bytes.count, bytes[i] == b else { throw fail("invalid literal, expected \(word)") }
            i += 1
        }
    }

    private mutating func value() throws(JSONSyntaxError) -> JSONNode {
        guard i < bytes.count else { throw fail("unexpected end of file") }
        let startLine = line
        switch bytes[i] {
        case UInt8(ascii: "{"):
            return JSONNode(value: try object(), line: startLine)
        case UInt8(ascii: "["):
            return JSONNode(value: try array(), line: startLine)
        case UInt8(ascii: "\""):
            return JSONNode(value: .string(try string()), line: startLine)
        case UInt8(ascii: "t"): try expect("true"); return JSONNode(value: .bool(true), line: startLine)
        case UInt8(ascii: "f"): try expect("false"); return JSONNode(value: .bool(false), line: startLine)
        case UInt8(ascii: "n"): try expect("null"); return JSONNode(value: .null, line: startLine)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            let s = i
            while i < bytes.count, "+-0123456789.eE".utf8.contains(bytes[i]) { i += 1 }
            let text = String(decoding: bytes[s..<i], as: UTF8.self)
            guard let d = Double(text), text.first != "+", !(text.hasPrefix("0") && text.count > 1 && text.dropFirst().first?.isNumber == true) else {
                throw fail("invalid number \(text)")
            }
            return JSONNode(value: .number(d), line: startLine)
        default:
            throw fail("unexpected character '\(Character(UnicodeScalar(bytes[i])))'")
        }
    }

    /// `{ "key": value, … }`, keys in file order; a repeated key keeps its first position and its last value.
    private mutating func object() throws(JSONSyntaxError) -> JSONNode.Value {
        depth += 1
        guard depth < 128 else { throw fail("nesting too deep") }
        defer { depth -= 1 }
        i += 1
        var dict: [String: JSONNode] = [:]
        var keys: [String] = []
        skipSpace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(dict, keys: keys) }
        while true {
            skipSpace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a quoted key") }
            let key = try string()
            skipSpace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw fail("expected ':' after key \"\(key)\"") }
            i += 1
            skipSpace()
            let v = try value()
            if dict[key] == nil { keys.append(key) }
            dict[key] = v
            skipSpace()
            guard i < bytes.count else { throw fail("unexpected end of file inside an object") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
            if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(dict, keys: keys) }
            throw fail("expected ',' or '}' in an object")
        }
    }

    private mutating func array() throws(JSONSyntaxError) -> JSONNode.Value {
        depth += 1
        guard depth < 128 else { throw fail("nesting too deep") }
        defer { depth -= 1 }
        i += 1
        var items: [JSONNode] = []
        skipSpace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
        while true {
            skipSpace()
            items.append(try value())
            skipSpace()
            guard i < bytes.count else { throw fail("unexpected end of file inside an array") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
            if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            throw fail("expected ',' or ']' in an array")
        }
    }

    private mutating func string() throws(JSONSyntaxError) -> String {
        i += 1  // opening quote
        var out: [UInt8] = []
        while true {
            guard i < bytes.count else { throw fail("unterminated string") }
            let c = bytes[i]
            i += 1
            switch c {
            case UInt8(ascii: "\""):
                return String(decoding: out, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard i < bytes.count else { throw fail("unterminated string") }
                let e = bytes[i]
                i += 1
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xD800..<0xDC00).contains(scalar) {
                        guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                            throw fail("unpaired surrogate in string")
                        }
                        i += 2
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw fail("unpaired surrogate in string") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let u = UnicodeScalar(scalar) else { throw fail("invalid \\u escape") }
                    out.append(contentsOf: Array(String(Character(u)).utf8))
                default: throw fail("invalid escape in string")
                }
            case 0x00..<0x20:
                throw fail("control character in string")
            default:
                out.append(c)
            }
        }
    }

    private mutating func hex4() throws(JSONSyntaxError) -> UInt32 {
        guard i + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[i..<(i + 4)], as: UTF8.self), radix: 16) else {
            throw fail("invalid \\u escape")
        }
        i += 4
        return v
    }
}

extension JSONNode {
    /// The node as JSON text again (keys in their order), for handing a checked document on to `Codable`.
    public var jsonText: String {
        switch value {
        case .object(let fields, let keys):
            return "{" + keys.map { Self.quoted($0) + ":" + fields[$0]!.jsonText }.joined(separator: ",") + "}"
        case .array(let items): return "[" + items.map(\.jsonText).joined(separator: ",") + "]"
        case .string(let s): return Self.quoted(s)
        case .number(let n): return n == n.rounded() && abs(n) < 1e15 ? String(Int64(n)) : "\(n)"
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        }
    }

    static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where u.value < 0x20:
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}
