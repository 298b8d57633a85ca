// Interoperability with the reference implementation (Python `safetensors` + numpy): files we write
// open there with the right values, and files it writes open here. Skipped where Python lacks the
// packages (`pip install safetensors numpy` enables it).
import Foundation
import Testing
@testable import Training

/// Runs `python3 -c script args...`; returns (exit status, stdout + stderr).
func runPython(_ script: String, _ arguments: [String] = []) -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", "-c", script] + arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    do { try process.run() } catch { return (-1, "\(error)") }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

let pythonHasSafetensors = runPython("import safetensors, numpy").status == 0

@Suite(.enabled(if: pythonHasSafetensors, "python3 with safetensors and numpy is not installed"))
struct SafeTensorsPythonTests {
    @Test func pythonReadsWhatSwiftWrites() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("swift.safetensors")
        try SafeTensors.write([
            SafeTensorsEntry(name: "w", shape: [2, 3], float32: [0.5, -1.25, 3, 1e-7, -0.0, 65504]),
            SafeTensorsEntry(name: "idx", dtype: .i64, shape: [3], bytes: littleEndianBytes([Int64(-5), 0, 1 << 50])),
            SafeTensorsEntry(name: "n", dtype: .i32, shape: [1, 2], bytes: littleEndianBytes([Int32(7), Int32.min])),
            SafeTensorsEntry(name: "d", dtype: .f64, shape: [], bytes: littleEndianBytes([(0.1 as Double).bitPattern])),
            SafeTensorsEntry(name: "h", dtype: .f16, shape: [2], bytes: [0x00, 0x3C, 0x00, 0xC0]),  // 1.0, -2.0
        ], metadata: ["step": "42", "name": "run \"α\""], to: path)
        let script = """
        import sys, json
        from safetensors import safe_open
        out = {}
        with safe_open(sys.argv[1], framework="np") as f:
            out["metadata"] = f.metadata()
            for k in f.keys():
                t = f.get_tensor(k)
                out[k] = {"dtype": str(t.dtype), "shape": list(t.shape), "values": [float(x) for x in t.reshape(-1)]}
        print(json.dumps(out, sort_keys=True))
        """
        let (status, output) = runPython(script, [path])
        try #require(status == 0, "python failed: \(output)")
        let parsed = try JSONSerialization.jsonObject(with: Data(output.utf8)) as! [String: Any]
        #expect(parsed["metadata"] as? [String: String] == ["step": "42", "name": "run \"α\""])
        func tensor(_ name: String) -> (dtype: String, shape: [Int], values: [Double]) {
            let t = parsed[name] as! [String: Any]
            return (t["dtype"] as! String, t["shape"] as! [Int], (t["values"] as! [NSNumber]).map(\.doubleValue))
        }
        #expect(tensor("w").dtype == "float32" && tensor("w").shape == [2, 3])
        #expect(tensor("w").values == [0.5, -1.25, 3, Double(Float(1e-7)), 0, 65504])
        #expect(tensor("idx").dtype == "int64" && tensor("idx").values == [-5, 0, Double(1 << 50)])
        #expect(tensor("n").dtype == "int32" && tensor("n").shape == [1, 2] && tensor("n").values == [7, Double(Int32.min)])
        #expect(tensor("d").dtype == "float64" && tensor("d").shape == [] && tensor("d").values == [0.1])
        #expect(tensor("h").dtype == "float16" && tensor("h").values == [1, -2])
    }

    @Test func swiftReadsWhatPythonWrites() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("python.safetensors")
        let script = """
        import sys, numpy as np
        from safetensors.numpy import save_file
        save_file({
            "x": (np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5 - 1),
            "y": np.array([1, -2, 3000000000], dtype=np.int64),
            "z": np.array([[0.25]], dtype=np.float64),
            "e": np.zeros((0, 3), dtype=np.float32),
        }, sys.argv[1], metadata={"format": "np", "note": "written by python"})
        """
        let (status, output) = runPython(script, [path])
        try #require(status == 0, "python failed: \(output)")
        let file = try SafeTensors.read(path: path)
        #expect(file.names == ["e", "x", "y", "z"])
        #expect(file.metadata == ["format": "np", "note": "written by python"])
        #expect(file["x"]?.shape == [2, 3])
        #expect(file["x"]?.float32Values == [-1, -0.5, 0, 0.5, 1, 1.5])
        #expect(file["y"]?.dtype == .i64 && file["y"]?.bytes == littleEndianBytes([Int64(1), -2, 3_000_000_000]))
        #expect(file["z"]?.dtype == .f64 && file["z"]?.shape == [1, 1]
                && file["z"]?.bytes == littleEndianBytes([(0.25 as Double).bitPattern]))
        #expect(file["e"]?.shape == [0, 3] && file["e"]?.bytes == [])
    }
}
