/// A decoding failure that names the field that failed, e.g. "SRV.priority".
public struct WireError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        case truncated
        case badLabel
        case nameTooLong
        case pointerLoop
        case forwardPointer
        case badValue
    }
    public let kind: Kind
    public let field: String

    public init(_ kind: Kind, _ field: String) {
        self.kind = kind
        self.field = field
    }

    public var description: String {
        switch kind {
        case .truncated: return "\(field): message ends early"
        case .badLabel: return "\(field): bad label type"
        case .nameTooLong: return "\(field): name longer than 255 bytes"
        case .pointerLoop: return "\(field): compression pointer loop"
        case .forwardPointer: return "\(field): compression pointer does not point backwards"
        case .badValue: return "\(field): invalid value"
        }
    }
}
