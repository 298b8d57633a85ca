// A checkpoint's model.safetensors opens in Python's `safetensors` (what PyTorch users load it with)
// with the module-tree names, the shapes and the values of the trained model. Skipped where Python
// lacks the packages (`pip install safetensors numpy`).
import Foundation
import Testing
@testable import Training

@Suite(.enabled(if: pythonHasSafetensors, "python3 with safetensors and numpy is not installed"))
struct CheckpointPythonTests {
    @Test func pythonReadsTheModelCheckpoint() throws {
        let dir = TemporaryDirectory()
        let out = try trainTinyRun(in: dir, steps: 3, ["experts": .int(2)])
        let (model, _, _) = try ModelFactory.load(checkpoint: out, device: .cpu)
        let script = """
        import sys, json
        from safetensors import safe_open
        out = {}
        with safe_open(sys.argv[1], framework="np") as f:
            meta = f.metadata()
            for k in f.keys():
                t = f.get_tensor(k)
                out[k] = {"dtype": str(t.dtype), "shape": list(t.shape), "first": [float(x) for x in t.reshape(-1)[:3]],
                          "sum": float(t.astype("float64").sum())}
        print(json.dumps({"tensors": out, "metadata": meta}))
        """
        let (status, output) = runPython(script, [out + "/checkpoint-3/model.safetensors"])
        try #require(status == 0, "python failed: \(output)")
        let parsed = try JSONSerialization.jsonObject(with: Data(output.utf8)) as! [String: Any]
        let tensors = parsed["tensors"] as! [String: [String: Any]]
        #expect((parsed["metadata"] as? [String: String])?["format"] == "pt")
        // Parameters and buffers (the routing bias of --balance bias), all float32 here.
        let saved = model.namedParameters().map { ($0.name, $0.parameter.value) } + model.namedBuffers().map { ($0.name, $0.buffer.value) }
        #expect(Set(tensors.keys) == Set(saved.map(\.0)))
        #expect(tensors["blocks.1.mlp.experts.fc1.weight"] != nil && tensors["blocks.0.attn.qkv.weight"] != nil)
        #expect(tensors["blocks.0.mlp.gate.expertBias"] != nil)
        for (name, value) in saved {
            let t = try #require(tensors[name])
            let values = value.scalars()
            #expect(t["dtype"] as? String == "float32")
            #expect(t["shape"] as? [Int] == value.shape, "\(name)")
            #expect((t["first"] as! [NSNumber]).map { Float($0.doubleValue) } == Array(values.prefix(3)), "\(name)")
            let sum = values.reduce(0.0) { $0 + Double($1) }
            #expect(abs((t["sum"] as! NSNumber).doubleValue - sum) <= 1e-9 * max(1, abs(sum)), "\(name)")
        }
    }
}
