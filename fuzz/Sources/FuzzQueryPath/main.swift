import FuzzChecks
import FuzzDriver

@_cdecl("FuzzQueryPath_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, FuzzChecks.queryPath)
}
