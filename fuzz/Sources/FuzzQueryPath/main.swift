import FuzzChecks

/// libFuzzer entry point: the whole query path, bytes in and bytes out, fast paths against the general path.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQueryPath(_ data: UnsafeRawPointer?, _ size: Int) -> CInt {
    let problems = FuzzChecks.queryPath(UnsafeRawBufferPointer(start: data, count: size))
    if !problems.isEmpty { fatalError(problems.joined(separator: "; ")) }
    return 0
}
