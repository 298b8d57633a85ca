import Testing
@testable import CUDA

@Suite("CUDA library loading")
struct LibraryLoaderTests {
    @Test func missingLibraryErrorListsEveryPathAndTheVariable() throws {
        let environment: (String) -> String? = { name in
            name == LibraryLoader.environmentVariable ? "/fastmoe-test/first:/fastmoe-test/second" : nil
        }
        let candidate = "libfastmoe_surely_missing.so.7"
        do {
            _ = try LibraryLoader.load(name: "libfastmoe_surely_missing", candidates: [candidate], environment: environment)
            Issue.record("loading a library that does not exist succeeded")
        } catch let error as CUDAError {
            guard case let .libraryNotFound(name, candidates, searched, dlerrors) = error else {
                Issue.record("expected libraryNotFound, got \(error)")
                return
            }
            #expect(name == "libfastmoe_surely_missing")
            #expect(candidates == [candidate])
            #expect(searched.count == dlerrors.count)
            // The user's directories come first, in their order, then the default loader, then the usual places.
            #expect(searched.first == "/fastmoe-test/first/\(candidate)")
            #expect(searched.dropFirst().first == "/fastmoe-test/second/\(candidate)")
            #expect(searched.contains("\(candidate) (default loader path)"))
            #expect(searched.contains("/usr/local/cuda/lib64/\(candidate)"))
            #expect(searched.contains("/usr/local/nvidia/lib64/\(candidate)"))
            let message = error.description
            #expect(message.contains("FASTMOE_CUDA_LIBRARY_PATH"))
            #expect(message.contains("/fastmoe-test/second/\(candidate)"))
            #expect(message.contains("/usr/local/cuda/lib64/\(candidate)"))
            #expect(message.contains("libfastmoe_surely_missing"))
        }
    }

    @Test func everyCandidateNameIsTriedInOrder() throws {
        let environment: (String) -> String? = { _ in nil }
        do {
            _ = try LibraryLoader.load(name: "libnone", candidates: ["libnone.so.13", "libnone.so.12"], environment: environment)
            Issue.record("loading a library that does not exist succeeded")
        } catch let CUDAError.libraryNotFound(_, _, searched, _) {
            let first13 = try #require(searched.firstIndex { $0.contains("libnone.so.13") })
            let first12 = try #require(searched.firstIndex { $0.contains("libnone.so.12") })
            let last13 = try #require(searched.lastIndex { $0.contains("libnone.so.13") })
            #expect(first13 < first12)
            #expect(last13 < first12)
        }
    }

    @Test func loadsASystemLibraryAndResolvesItsPath() throws {
        let libc = try LibraryLoader.load(name: "libc", candidates: ["libc.so.6"], environment: { _ in nil })
        #expect(libc.path.hasPrefix("/"))
        #expect(libc.path.contains("libc"))
        #expect(libc.fileName == "libc.so.6")
        typealias Strlen = @convention(c) (UnsafePointer<CChar>?) -> Int
        let strlen = try libc.symbol("strlen", as: Strlen.self)
        #expect(strlen("fastmoe") == 7)
    }

    @Test func missingSymbolNamesTheSymbolAndTheLibrary() throws {
        let libc = try LibraryLoader.load(name: "libc", candidates: ["libc.so.6"], environment: { _ in nil })
        typealias Nothing = @convention(c) () -> Void
        #expect(libc.optionalSymbol("fastmoe_no_such_symbol", as: Nothing.self) == nil)
        do {
            _ = try libc.symbol("fastmoe_no_such_symbol", as: Nothing.self)
            Issue.record("a missing symbol was found")
        } catch let error as CUDAError {
            #expect(error == .symbolNotFound(symbol: "fastmoe_no_such_symbol", library: "libc", path: libc.path))
            #expect(error.description.contains("fastmoe_no_such_symbol"))
            #expect(error.description.contains("libc"))
        }
    }

    @Test func availabilityIsConsistentAndDiagnosticsCoverEveryLibrary() {
        let available = CUDA.isAvailable
        #expect(available == (CUDA.deviceCount > 0))
        let report = CUDA.diagnostics()
        #expect(report.libraries.map(\.library) == ["driver (libcuda)", "nvrtc", "cublas", "cublasLt", "nccl"])
        if available {
            #expect(report.devices.count == CUDA.deviceCount)
        } else {
            #expect(report.devices.isEmpty)
            #expect(report.deviceError != nil)
        }
        #expect(!report.description.isEmpty)
    }

    @Test(.enabled(if: (try? LibraryLoader.load(name: "libcuda", candidates: ["libcuda.so.1", "libcuda.so"])) == nil))
    func withoutADriverNothingIsAvailableAndTheReasonSaysWhatToSet() throws {
        #expect(CUDA.isAvailable == false)
        #expect(CUDA.deviceCount == 0)
        #expect(throws: CUDAError.self) { try CUDA.device(0) }
        let driver = try #require(CUDA.diagnostics().libraries.first)
        guard case let .unavailable(reason) = driver.status else {
            Issue.record("driver reported as loaded without libcuda")
            return
        }
        #expect(reason.contains("libcuda.so.1"))
        #expect(reason.contains("FASTMOE_CUDA_LIBRARY_PATH"))
    }
}
