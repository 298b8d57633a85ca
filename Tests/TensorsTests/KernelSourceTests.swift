import Testing
@testable import CUDA
@testable import Tensors
#if canImport(Glibc)
import Glibc
#endif

/// NVRTC compiles the kernels only at run time, on a GPU machine; a kernel renamed, moved to a file
/// outside its module, defined twice, or an op code out of step with `UnaryOp` would only show there.
/// These checks read the module sources (and the launch sites' Swift source) on any machine.
@Suite("CUDA kernel sources, checked without a GPU")
struct KernelSourceTests {
    static let movement = CUDABackend.moduleSource(nil)
    static let typed: [(DType, String)] = [DType.float32, .float64, .bfloat16].map { dtype in (dtype, CUDABackend.moduleSource(dtype)) }
    static let hopper = CUDABackend.hopperModuleSource

    @Test func noModuleDefinesAKernelMacroOrHelperTwice() {
        for (name, source) in [("movement", Self.movement), ("hopper", Self.hopper)] + Self.typed.map({ ("\($0.0)", $0.1) }) {
            let parsed = KernelSource(source)
            #expect(!parsed.kernels.isEmpty)
            for (what, names) in [("kernel", parsed.kernels), ("macro", parsed.macroNames), ("device function", parsed.deviceFunctions)] {
                let twice = Dictionary(grouping: names, by: { $0 }).filter { $0.value.count > 1 }.keys.sorted()
                #expect(twice.isEmpty, "module \(name) defines the \(what)s \(twice) more than once: NVRTC will not compile it")
            }
        }
    }

    /// Each case of the CUDA unary switches names the `UnaryOp` it implements; the codes must be the
    /// order of `UnaryOp.allCases` (what `UnaryOp.code` sends), every op must have a value and a derivative.
    @Test func unaryOpCodesMatchUnaryOp() throws {
        let source = ElementwiseKernels.source
        for function in ["unary_value", "unary_derivative"] {
            let start = try #require(source.firstRange(of: "acc_t \(function)(int op, acc_t x)"))
            let end = try #require(source[start.upperBound...].firstRange(of: "default:"))
            var codes: [Int: String] = [:]
            for line in source[start.upperBound..<end.lowerBound].split(separator: "\n") {
                guard let c = line.firstMatch(of: #/case (\d+):/#), let comment = line.firstMatch(of: #/\/\/ (\w+)/#) else { continue }
                codes[Int(c.1)!] = String(comment.1)
            }
            let wrong = (0..<max(UnaryOp.allCases.count, (codes.keys.max() ?? -1) + 1)).compactMap { code -> String? in
                let op = code < UnaryOp.allCases.count ? UnaryOp.allCases[code].rawValue : "nothing"
                return codes[code] == op ? nil : "code \(code): CUDA \(codes[code] ?? "nothing"), UnaryOp \(op)"
            }
            #expect(wrong.isEmpty, "\(function) is out of step with UnaryOp: \(wrong)")
        }
    }

    /// Every kernel file's kernels are compiled into some module (a new family file must be added to
    /// `CUDABackend.moduleSource`). Needs the package sources, so it runs where they are.
    @Test(.enabled(if: SourceTree.root != nil))
    func everyKernelFileIsInAModule() throws {
        let dir = try #require(SourceTree.root) + "/Sources/Tensors/CUDA/Kernels"
        let compiled = Set(KernelSource(Self.movement).kernels).union(KernelSource(Self.typed[0].1).kernels)
            .union(KernelSource(Self.hopper).kernels)
        let files = SourceTree.swiftFiles(in: dir)
        #expect(files.count >= 10, "found only \(files) in \(dir)")
        for file in files {
            let text = try #require(SourceTree.read(dir + "/" + file))
            let kernels = KernelSource(KernelPrelude.source + "\n" + SourceTree.rawStrings(in: text).joined(separator: "\n")).kernels
            let missing = Set(kernels).subtracting(compiled).sorted()
            #expect(missing.isEmpty, "\(file) defines \(missing), which no module compiles: add its source to CUDABackend.moduleSource")
        }
    }

    /// Every kernel a launch site in `Sources/Tensors/CUDA/*.swift` looks up exists in the module it
    /// looks in (`nil` dtype: the movement module; a dtype: that dtype's module), and every kernel a
    /// module defines is launched somewhere.
    @Test(.enabled(if: SourceTree.root != nil))
    func everyLaunchedKernelExistsInItsModule() throws {
        let dir = try #require(SourceTree.root) + "/Sources/Tensors/CUDA"
        let movement = Set(KernelSource(Self.movement).kernels)
        // `typedModule`: the one typed module a launch site names with a dtype literal (nil: any dtype).
        var launched: [(name: String, movementModule: Bool, typedModule: String?, site: String)] = []
        for file in SourceTree.swiftFiles(in: dir) {
            let text = try #require(SourceTree.read(dir + "/" + file))
            for call in LaunchSite.calls(in: text) {
                let site = "\(file):\(call.line)"
                let movementModule = call.arguments.count > 1 && call.arguments[1] == "nil"
                let typedModule = call.function == "hopperKernel" ? "hopper"
                    : call.arguments.count > 1 && call.arguments[1].hasPrefix(".") ? String(call.arguments[1].dropFirst()) : nil
                switch LaunchSite.kernelNames(call) {
                case .forwarded: continue
                case .unresolved(let why):
                    Issue.record("\(site): \(why)")
                case .names(let names):
                    launched += names.map { ($0, movementModule, typedModule, site) }
                }
            }
        }
        #expect(launched.count > 40, "found only \(launched.count) launched kernels: is the launch-site scanner broken?")
        for (dtype, source) in Self.typed {
            let defined = Set(KernelSource(source).kernels)
            let missing = launched.filter { $0.typedModule == nil || $0.typedModule == "\(dtype)" }
                .filter { !($0.movementModule ? movement : defined).contains($0.name) }
                .map { "\($0.site) \($0.name) (\($0.movementModule ? "movement" : "\(dtype)") module)" }
            #expect(missing.isEmpty, "launch sites name kernels their module does not define: \(missing)")
            let unused = defined.subtracting(launched.filter { !$0.movementModule }.map(\.name)).sorted()
            #expect(unused.isEmpty, "the \(dtype) module defines kernels no launch site uses: \(unused)")
        }
        let hopperLaunches = launched.filter { $0.typedModule == "hopper" }, hopper = Set(KernelSource(Self.hopper).kernels)
        let missingHopper = hopperLaunches.filter { !hopper.contains($0.name) }.map { "\($0.site) \($0.name)" }
        #expect(missingHopper.isEmpty, "launch sites name kernels the hopper module does not define: \(missingHopper)")
        let unusedHopper = hopper.subtracting(hopperLaunches.map(\.name)).sorted()
        #expect(unusedHopper.isEmpty, "the hopper module defines kernels no launch site uses: \(unusedHopper)")
        let unusedMovement = movement.subtracting(launched.filter(\.movementModule).map(\.name)).sorted()
        #expect(unusedMovement.isEmpty, "the movement module defines kernels no launch site uses: \(unusedMovement)")
    }

    /// Every module compiles, wherever NVRTC can be loaded without a GPU (CI installs NVIDIA's
    /// `nvidia-cuda-nvrtc-cu12` wheel and points `FASTMOE_CUDA_LIBRARY_PATH` at it): a C++ error in a
    /// kernel would otherwise first show on the GPU machine.
    @Test(.enabled(if: (try? NVRTC.shared()) != nil))
    func everyModuleCompilesWithNVRTC() throws {
        let nvrtc = try NVRTC.shared()
        for dtype in [nil, .float32, .float64, .bfloat16] as [DType?] {
            let name = "fastmoe_\(dtype.map(\.rawValue) ?? "movement")"
            #expect(throws: Never.self, "\(name)") {
                _ = try nvrtc.compile(source: CUDABackend.moduleSource(dtype), name: name,
                                      options: ["--gpu-architecture=sm_90", "-std=c++17", "-default-device"], wantCUBIN: false)
            }
        }
        // wgmma exists only on the architecture-specific target.
        #expect(throws: Never.self, "fastmoe_hopper_bf16") {
            _ = try nvrtc.compile(source: Self.hopper, name: "fastmoe_hopper_bf16",
                                  options: ["--gpu-architecture=sm_90a", "-std=c++17", "-default-device"], wantCUBIN: true)
        }
    }

    /// The persistent wgmma kernel's consumers raise their registers (`setmaxnreg.inc`) with what the
    /// producer gave back: asking for more than the block was launched with hangs it on the GPU.
    @Test func hopperKernelRegisterSplitFitsItsLaunch() {
        #expect(GroupedGemmHopperKernels.registersFit)
        #expect(GroupedGemmHopperKernels.sharedMemoryBytes <= 227 * 1024)
    }

    /// The scanners themselves, on text whose answer is known.
    @Test func scannersReadMacrosAndCalls() {
        let cuda = """
        #define PAIR(S, E) \\
        extern "C" __global__ void copy_##S(const E* x) { } \\
        extern "C" __global__ void zero_##S(E* x) { }
        PAIR(2, unsigned short) PAIR(4, unsigned int)
        #define BOTH(ENTRY, SUFFIX) ENTRY(a##SUFFIX, float) ENTRY(b##SUFFIX, float)
        BOTH(PAIR, _x) BOTH(PAIR, )
        __device__ __forceinline__ float helper(float x) { return x; }
        extern "C" __global__ void plain(int n) { }
        // extern "C" __global__ void commented_out(int n) { }
        #define FM_F32
        #if defined(FM_F64)
        extern "C" __global__ void only_f64(int n) { }
        #define TWICE 1
        #elif defined(FM_F32)
        #define TWICE 2
        #else
        #define TWICE 3
        #endif
        """
        let parsed = KernelSource(cuda)
        #expect(parsed.kernels.sorted() == ["copy_2", "copy_4", "copy_a", "copy_a_x", "copy_b", "copy_b_x", "plain",
                                            "zero_2", "zero_4", "zero_a", "zero_a_x", "zero_b", "zero_b_x"])
        #expect(parsed.macroNames == ["PAIR", "BOTH", "FM_F32", "TWICE"] && parsed.deviceFunctions == ["helper"])
        let swift = #"""
        launchElementwise("copy_block_\(x.dtype.byteSize)", nil, count: n, [x.arg, .int64(Int64(f(a, b)))])
            launch(kernel("topk_rows", x.dtype), grid: (1, 1, 1))
        func launchRows(_ name: String, _ dtype: DType) { launch(kernel(name, dtype)) }
        launchRowwise("softmax_fwd", y.dtype, rows: r)
        launchElementwise("unary_fwd_\(op.code)", x.dtype, count: 4)
        launchElementwise("oops_\(mystery)", x.dtype, count: 4)
        """#
        let calls = LaunchSite.calls(in: swift)
        #expect(calls.map(\.line) == [1, 2, 3, 4, 5, 6])
        #expect(calls.first?.arguments.prefix(2) == [#""copy_block_\(x.dtype.byteSize)""#, "nil"])
        let names = calls.map { c -> [String]? in
            if case .names(let n) = LaunchSite.kernelNames(c) { return n.sorted() } else { return nil }
        }
        #expect(names[0] == ["copy_block_2", "copy_block_4", "copy_block_8"])
        #expect(names[1] == ["topk_rows"])
        #expect(names[2] == nil)
        #expect(names[3] == ["softmax_fwd", "softmax_fwd_w1", "softmax_fwd_w16", "softmax_fwd_w2", "softmax_fwd_w32",
                             "softmax_fwd_w4", "softmax_fwd_w8"])
        #expect(names[4]?.count == UnaryOp.allCases.count)
        if case .unresolved = LaunchSite.kernelNames(calls[5]) {} else { Issue.record("an unknown interpolation must not pass") }
    }
}

/// The names a CUDA C++ source defines: `extern "C" __global__` kernels (also those a function-like
/// macro stamps out, with `##` pasting), `#define`d macros, and `__device__` helpers. Enough of a
/// preprocessor for our kernel files, no more: `#if defined(X)` / `#ifdef` / `#ifndef` / `#elif
/// defined(X)` / `#else` / `#endif` are followed; any other `#if` keeps both branches.
struct KernelSource {
    var kernels: [String] = []
    var macroNames: [String] = []
    var deviceFunctions: [String] = []

    init(_ source: String) {
        let joined = source.replacing("\\\n", with: " ")
        var macros: [String: (parameters: [String], body: String)] = [:]
        var defined = Set<String>()
        var code: [Substring] = []
        // One entry per open #if: whether its enclosing text is live, this branch is live, a branch was taken.
        var conditions: [(outer: Bool, live: Bool, taken: Bool)] = []
        func test(_ condition: Substring) -> Bool {
            if let d = condition.firstMatch(of: #/^\s*defined\s*\(?\s*(\w+)\s*\)?\s*$/#) { return defined.contains(String(d.1)) }
            return true
        }
        for raw in joined.split(separator: "\n", omittingEmptySubsequences: false) {
            let line = raw.trimmingPrefix(while: \.isWhitespace)
            if line.hasPrefix("//") { continue }
            let live = conditions.last.map(\.live) ?? true
            if let c = line.firstMatch(of: #/^#(if|ifdef|ifndef|elif)\s+(.*)$/#) {
                switch c.1 {
                case "if": let t = test(c.2); conditions.append((live, live && t, t))
                case "ifdef": let t = defined.contains(c.2.trimmingCharacters()); conditions.append((live, live && t, t))
                case "ifndef": let t = !defined.contains(c.2.trimmingCharacters()); conditions.append((live, live && t, t))
                default:
                    guard let top = conditions.popLast() else { continue }
                    let t = !top.taken && test(c.2)
                    conditions.append((top.outer, top.outer && t, top.taken || t))
                }
                continue
            }
            if line.hasPrefix("#else"), let top = conditions.popLast() {
                conditions.append((top.outer, top.outer && !top.taken, true))
                continue
            }
            if line.hasPrefix("#endif") { _ = conditions.popLast(); continue }
            if !live { continue }
            if let m = line.firstMatch(of: #/^#define\s+(\w+)(\(([^)]*)\))?\s*(.*)$/#) {
                macroNames.append(String(m.1))
                defined.insert(String(m.1))
                if m.2 != nil {
                    let parameters = m.3.map { $0.split(separator: ",").map { $0.trimmingCharacters() } } ?? []
                    macros[String(m.1)] = (parameters, String(m.4))
                }
                continue
            }
            code.append(line)
        }
        func kernelNames(_ text: Substring) -> [String] {
            text.matches(of: #/extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?([\w#]+)\s*\(/#).map { String($0.1) }
        }
        // The kernels of the macro calls in `text`, each call's body with its arguments in place
        // (pasted with `##` or as whole words) scanned again, so a macro that calls the macro it is
        // given (`GG_ENTRIES(GG_ENTRY, )`) is followed.
        func expandedKernels(_ text: Substring, depth: Int) -> [String] {
            guard depth < 4 else { return [] }
            var found: [String] = []
            for call in text.matches(of: #/\b(\w+)\(([^()]*)\)/#) {
                guard let macro = macros[String(call.1)] else { continue }
                let arguments = call.2.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters() }
                var body = macro.body
                for (p, a) in zip(macro.parameters, arguments) {
                    body = body.replacing("##" + p, with: a)
                        .replacing(try! Regex("\\b\(p)\\b"), with: a)
                }
                found += kernelNames(body[...]) + expandedKernels(body[...], depth: depth + 1)
            }
            return found
        }
        for line in code {
            kernels += kernelNames(line) + expandedKernels(line, depth: 0)
            if let d = line.firstMatch(of: #/^(template\s*<[^>]*>\s*)?__device__\s+__forceinline__\s+[\w:]+\s+(\w+)\s*\(/#) {
                deviceFunctions.append(String(d.2))
            }
        }
    }
}

/// Calls that name a kernel in the CUDA backend's Swift source: `kernel(NAME, DTYPE)`,
/// `hopperKernel(NAME)` (the `sm_90a` module), `launchElementwise(NAME, DTYPE, ...)`, `launchRows(...)`, `launchRowwise(...)`.
enum LaunchSite {
    struct Call { let function: String; let arguments: [String]; let line: Int }

    static let functions = ["kernel", "hopperKernel", "launchElementwise", "launchRows", "launchRowwise"]

    static func calls(in text: String) -> [Call] {
        let chars = Array(text)
        var result: [Call] = []
        var line = 1
        var i = 0
        while i < chars.count {
            if chars[i] == "\n" { line += 1 }
            if chars[i] == "\"" { i = skipString(chars, i); continue }   // names inside strings are not calls
            guard chars[i].isLetter, i == 0 || !(chars[i - 1].isLetter || chars[i - 1].isNumber || chars[i - 1] == "_" || chars[i - 1] == ".") else {
                i += 1; continue
            }
            var j = i
            while j < chars.count, chars[j].isLetter || chars[j].isNumber || chars[j] == "_" { j += 1 }
            let word = String(chars[i..<j])
            let isDeclaration = i >= 5 && String(chars[(i - 5)..<i]) == "func "
            if functions.contains(word), j < chars.count, chars[j] == "(", !isDeclaration {
                let (arguments, end) = splitArguments(chars, from: j + 1)
                result.append(Call(function: word, arguments: arguments, line: line))
                // Count the lines inside the argument list, then keep scanning inside it for nested calls.
                _ = end
            }
            i = j
        }
        return result
    }

    /// The index just past the string literal that opens at `start` (interpolations `\( )` skipped).
    static func skipString(_ c: [Character], _ start: Int) -> Int {
        var i = start + 1
        while i < c.count, c[i] != "\"" {
            if c[i] == "\\", i + 1 < c.count, c[i + 1] == "(" {
                var depth = 1
                i += 2
                while i < c.count, depth > 0 {
                    if c[i] == "(" { depth += 1 } else if c[i] == ")" { depth -= 1 }
                    i += 1
                }
                continue
            }
            i += c[i] == "\\" ? 2 : 1
        }
        return i + 1
    }

    /// Top-level comma-separated arguments from just after `(` to the matching `)`.
    static func splitArguments(_ c: [Character], from start: Int) -> ([String], Int) {
        var arguments: [String] = []
        var current = "", depth = 0, i = start
        while i < c.count {
            let ch = c[i]
            if ch == "\"" {
                let end = skipString(c, i)
                current += String(c[i..<min(end, c.count)])
                i = end
                continue
            }
            if ch == "(" || ch == "[" { depth += 1 }
            if ch == ")" || ch == "]" {
                if depth == 0 { break }
                depth -= 1
            }
            if ch == ",", depth == 0 {
                arguments.append(current.trimmingCharacters())
                current = ""
            } else {
                current.append(ch)
            }
            i += 1
        }
        arguments.append(current.trimmingCharacters())
        return (arguments, i)
    }

    enum Names { case names([String]), forwarded, unresolved(String) }

    /// The kernel names a call can look up: its literal first argument with each interpolation
    /// expanded over every value it can take. `name` (a helper passing its parameter on) is skipped:
    /// the helper's callers are scanned themselves.
    static func kernelNames(_ call: Call) -> Names {
        guard let first = call.arguments.first else { return .unresolved("\(call.function)() without a kernel name") }
        if first == "name" || first == #""\(name)_w\(v)""# { return .forwarded }
        guard first.hasPrefix("\""), first.hasSuffix("\""), first.count >= 2 else {
            return .unresolved("\(call.function)(\(first), ...): pass the kernel name as a string literal so this test can check it")
        }
        var names = [""]
        var rest = Substring(first.dropFirst().dropLast())
        while let open = rest.firstRange(of: "\\(") {
            let literal = rest[..<open.lowerBound]
            var depth = 1, end = open.upperBound
            while end < rest.endIndex, depth > 0 {
                if rest[end] == "(" { depth += 1 } else if rest[end] == ")" { depth -= 1 }
                end = rest.index(after: end)
            }
            let expression = String(rest[open.upperBound..<rest.index(before: end)])
            let values: [String]
            if expression.hasSuffix(".dtype.byteSize") {
                values = ["2", "4", "8"]
            } else if expression == "moveBytes" {
                values = ["2", "4", "8", "16"]
            } else if expression == "Self.vectorSuffix(vector)" {
                values = ["", "_vec"]
            } else if expression == "suffix", let product = [("\"grouped_gemm_forward", CUDABackend.GroupedProduct.forward),
                                                              ("\"grouped_gemm_data_gradient", .dataGradient)]
                        .first(where: { first.hasPrefix($0.0) })?.1 {
                values = CUDABackend.KernelEpilogue.suffixes(product)
            } else if expression == "op.code", first.hasPrefix("\"unary_") {
                values = UnaryOp.allCases.map { "\($0.code)" }
            } else {
                return .unresolved("cannot tell which values \\(\(expression)) takes in \(first): teach LaunchSite.kernelNames")
            }
            names = names.flatMap { n in values.map { n + literal + $0 } }
            rest = rest[end...]
        }
        names = names.map { $0 + rest }
        if call.function == "launchRowwise" {
            // Rows up to 1024 elements take a warp kernel `NAME_wV`, longer rows the block kernel `NAME`.
            let widths = Set((1...1025).compactMap { CUDABackend.warpRowWidth(cols: $0) }).sorted()
            names = names.flatMap { n in [n] + widths.map { "\(n)_w\($0)" } }
        }
        return .names(names)
    }
}

/// The package's source tree, when the tests run from a checkout (not from a packed build on a GPU machine).
enum SourceTree {
    static let root: String? = {
        var path = "\(#filePath)"
        for _ in 0..<3 {
            guard let slash = path.lastIndex(of: "/") else { return nil }
            path = String(path[..<slash])
        }
        return read(path + "/Sources/Tensors/CUDA/CUDABackend.swift") == nil ? nil : path
    }()

    static func read(_ path: String) -> String? {
        guard let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = fread(&buffer, 1, buffer.count, f)
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The `.swift` files directly in `dir`, sorted.
    static func swiftFiles(in dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let entry = readdir(d) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if name.hasSuffix(".swift") { names.append(name) }
        }
        return names.sorted()
    }

    /// The contents of the `#"""` raw string literals of a Swift file (where our kernel sources live).
    static func rawStrings(in text: String) -> [String] {
        text.split(separator: "#\"\"\"", omittingEmptySubsequences: false).dropFirst().compactMap { part in
            part.firstRange(of: "\"\"\"#").map { String(part[..<$0.lowerBound]) }
        }
    }
}

extension StringProtocol {
    func trimmingCharacters() -> String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
