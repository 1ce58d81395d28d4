/// What both fuzz executables share: libFuzzer's per-input entry point, which runs the check the executable
/// chose, and the hand-over to libFuzzer's driver (SwiftPM links an executable target's entry point under
/// `<Target>_main`, so libFuzzer's own `main` never runs).
nonisolated(unsafe) private var check: ((UnsafeRawBufferPointer) -> [String])?

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let problems = check!(UnsafeRawBufferPointer(start: data, count: size))
    if !problems.isEmpty { fatalError(problems.joined(separator: "; ")) }
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
private func runDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                       _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

/// Runs libFuzzer with `argc`/`argv` (its usual flags and corpus directories), checking each input with `checks`.
public func runFuzzer(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                      _ checks: @escaping (UnsafeRawBufferPointer) -> [String]) -> CInt {
    check = checks
    var count = argc
    var arguments = argv
    return runDriver(&count, &arguments, fuzzOne)
}
