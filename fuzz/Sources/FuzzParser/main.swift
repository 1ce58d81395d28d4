import FuzzChecks

/// libFuzzer entry point: the message and query parsers on arbitrary bytes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzParser(_ data: UnsafeRawPointer?, _ size: Int) -> CInt {
    let problems = FuzzChecks.parser(UnsafeRawBufferPointer(start: data, count: size))
    if !problems.isEmpty { fatalError(problems.joined(separator: "; ")) }
    return 0
}
