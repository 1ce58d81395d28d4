import NIOCore

/// The fixed 12-byte DNS header (RFC 1035 §4.1.1).
public struct DNSHeader: Hashable, Sendable {
    public var id: UInt16
    public var flags: UInt16
    public var qdCount: UInt16
    public var anCount: UInt16
    public var nsCount: UInt16
    public var arCount: UInt16

    public static let size = 12

    public init(id: UInt16 = 0, flags: UInt16 = 0, qdCount: UInt16 = 0, anCount: UInt16 = 0,
                nsCount: UInt16 = 0, arCount: UInt16 = 0) {
        self.id = id
        self.flags = flags
        self.qdCount = qdCount
        self.anCount = anCount
        self.nsCount = nsCount
        self.arCount = arCount
    }

    public init?(from buffer: ByteBuffer, at offset: Int) {
        guard let id = buffer.getInteger(at: offset, as: UInt16.self),
              let flags = buffer.getInteger(at: offset + 2, as: UInt16.self),
              let qd = buffer.getInteger(at: offset + 4, as: UInt16.self),
              let an = buffer.getInteger(at: offset + 6, as: UInt16.self),
              let ns = buffer.getInteger(at: offset + 8, as: UInt16.self),
              let ar = buffer.getInteger(at: offset + 10, as: UInt16.self) else { return nil }
        self.init(id: id, flags: flags, qdCount: qd, anCount: an, nsCount: ns, arCount: ar)
    }

    public func write(to buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(id, flags, qdCount, anCount, nsCount, arCount)
    }

    private func bit(_ n: Int) -> Bool { flags & (1 << n) != 0 }
    private mutating func set(_ n: Int, _ on: Bool) {
        if on { flags |= 1 << n } else { flags &= ~(1 << n) }
    }

    public var qr: Bool { get { bit(15) } set { set(15, newValue) } }
    public var opcode: UInt8 {
        get { UInt8((flags >> 11) & 0xF) }
        set { flags = (flags & ~(0xF << 11)) | (UInt16(newValue & 0xF) << 11) }
    }
    public var aa: Bool { get { bit(10) } set { set(10, newValue) } }
    public var tc: Bool { get { bit(9) } set { set(9, newValue) } }
    public var rd: Bool { get { bit(8) } set { set(8, newValue) } }
    public var ra: Bool { get { bit(7) } set { set(7, newValue) } }
    public var ad: Bool { get { bit(5) } set { set(5, newValue) } }
    public var cd: Bool { get { bit(4) } set { set(4, newValue) } }
    /// The low four bits of the rcode; EDNS carries the upper eight in the OPT record.
    public var rcode: UInt8 {
        get { UInt8(flags & 0xF) }
        set { flags = (flags & ~0xF) | UInt16(newValue & 0xF) }
    }
}
