import BatonFuzzTargets
import Glibc

// Built only by `make fuzz` (scripts/fuzz.sh), with -sanitize=fuzzer,address: libFuzzer
// brings main. The target is named by BATON_FUZZ_TARGET (ledger-record, ledger-snapshot,
// config, request-body, release), read once.

let target: FuzzTarget = {
    let name = getenv("BATON_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let target = FuzzTarget(rawValue: name) else {
        fatalError("BATON_FUZZ_TARGET must be one of \(FuzzTarget.allCases.map(\.rawValue)), not \"\(name)\"")
    }
    return target
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    target.run(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
