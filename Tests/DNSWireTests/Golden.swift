import NIOCore

/// Queries captured from real clients on loopback (dig 9.18, kdig 3.2, drill 1.8).
enum Golden {
    static let digSRVWithCookie = "a0bb0120000100000000000103776562077365727669636506636f6e73756c000021000100002904d000000000000c000a000871b3c9dd45571afc"
    static let digANoEDNSMixedCase = "5a110120000100000000000003576562075365727669636506436f6e73756c0000010001"
    static let kdigAAAA = "ea780120000100000000000003617069077365727669636506636f6e73756c00001c0001"
    static let drillSRV = "134f01000001000000000000045f776562045f746370077365727669636506636f6e73756c0000210001"

    static let all = [digSRVWithCookie, digANoEDNSMixedCase, kdigAAAA, drillSRV]
}

func bytes(hex: String) -> [UInt8] {
    var out: [UInt8] = []
    var it = hex.makeIterator()
    while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16)!) }
    return out
}

func buffer(hex: String) -> ByteBuffer { ByteBuffer(bytes: bytes(hex: hex)) }
