import NN
import Tensors
import Testing
@testable import Distributed

/// Every rank must build the same model; a difference stops every rank with a message naming the
/// first parameter that differs and the two ranks.
@Suite("Model agreement")
struct ModelAgreementTests {
    static func model(_ shapes: [(String, [Int])]) -> [(name: String, parameter: Parameter)] {
        shapes.map { ($0.0, Parameter(Tensor.zeros($0.1, dtype: .float64))) }
    }

    /// Each rank's error message, or nil where it passed.
    static func check(_ models: [[(String, [Int])]]) throws -> [String?] {
        try ThreadProcessGroup.run(worldSize: models.count) { group -> String? in
            do {
                try ModelAgreement.check(model(models[group.rank]), over: group)
                return nil
            } catch {
                return "\(error)"
            }
        }
    }

    @Test func sameModelsPass() throws {
        let m = [("wte", [16, 4]), ("blocks.0.fc.weight", [8, 4])]
        #expect(try Self.check([m, m, m]) == [nil, nil, nil])
    }

    @Test func aDifferentShapeIsNamedOnEveryRank() throws {
        let m = [("wte", [16, 4]), ("blocks.0.fc.weight", [8, 4])]
        let other = [("wte", [16, 4]), ("blocks.0.fc.weight", [8, 5])]
        let messages = try Self.check([m, m, other])
        let expected = "rank 0 and rank 2 built different models: parameter 1 is 'blocks.0.fc.weight [8, 4] float64 shared' on rank 0 "
            + "but 'blocks.0.fc.weight [8, 5] float64 shared' on rank 2; every rank must run the same command with the same "
            + "settings and files (check the flags, config files and fastmoe version on every node)"
        #expect(messages == [expected, expected, expected])
    }

    @Test func anExtraParameterIsNamed() throws {
        let m = [("wte", [16, 4])]
        let messages = try Self.check([m, m + [("lm_head", [16, 4])]])
        #expect(messages[0]?.contains("rank 0 has 1 parameters and rank 1 has 2; the first extra one, on rank 1, is 'lm_head [16, 4] float64 shared'") == true,
                "\(messages[0] ?? "no error")")
        #expect(messages[0] == messages[1])
    }
}
