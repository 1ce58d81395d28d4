/// Record types this codec knows by name (RFC 1035, 3596, 2782, 6891).
public enum RRType {
    public static let a: UInt16 = 1
    public static let ns: UInt16 = 2
    public static let cname: UInt16 = 5
    public static let soa: UInt16 = 6
    public static let ptr: UInt16 = 12
    public static let mx: UInt16 = 15
    public static let txt: UInt16 = 16
    public static let aaaa: UInt16 = 28
    public static let srv: UInt16 = 33
    public static let opt: UInt16 = 41
    public static let ixfr: UInt16 = 251
    public static let axfr: UInt16 = 252
    public static let any: UInt16 = 255
}

public enum DNSClass {
    public static let inet: UInt16 = 1
    public static let chaos: UInt16 = 3
    public static let any: UInt16 = 255
}

/// Response codes; values above 15 need EDNS (RFC 6891).
public enum RCode {
    public static let noError: UInt16 = 0
    public static let formErr: UInt16 = 1
    public static let servFail: UInt16 = 2
    public static let nxDomain: UInt16 = 3
    public static let notImp: UInt16 = 4
    public static let refused: UInt16 = 5
    public static let badVers: UInt16 = 16
}

public enum Opcode {
    public static let query: UInt8 = 0
}
