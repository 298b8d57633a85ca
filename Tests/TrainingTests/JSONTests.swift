import Testing
@testable import Training

@Suite struct JSONTests {
    @Test func parsesValuesKeepingIntegersExactAndMemberOrder() throws {
        let value = try JSONValue.parse(" {\"b\": [1, -2.5e3, true, null, \"x\"],\n \"a\": 9007199254740993} ")
        #expect(value == .object([
            JSONMember("b", .array([.int(1), .double(-2500), .bool(true), .null, .string("x")]), line: 1),
            JSONMember("a", .int(9_007_199_254_740_993), line: 2),  // 2^53 + 1: exact, unlike a Double
        ]))
    }

    @Test func decodesEscapesAndSurrogatePairs() throws {
        #expect(try JSONValue.parse("\"a\\\"b\\\\c\\/\\n\\t\\u00e9\\ud83c\\udf0d\"") == .string("a\"b\\c/\n\té🌍"))
    }

    @Test func serializesWithEscapesAndNullForNonFinite() throws {
        let value = JSONValue.object([
            JSONMember("s", .string("q\"\\\n\u{01}é")), JSONMember("d", .double(0.1)), JSONMember("n", .double(.nan)),
            JSONMember("i", .int(-3)), JSONMember("a", .array([])),
        ])
        #expect(value.serialized() == "{\"s\":\"q\\\"\\\\\\n\\u0001é\",\"d\":0.1,\"n\":null,\"i\":-3,\"a\":[]}")
        #expect(try JSONValue.parse(value.serialized())["s"] == .string("q\"\\\n\u{01}é"))
    }

    @Test(arguments: [
        ("{\"a\" 1}", "line 1, column 6: expected ':' after key \"a\""),
        ("[1, 2", "line 1, column 6: unexpected end of text inside an array; a ']' is missing"),
        ("01", "line 1, column 2: unexpected text after the end of the JSON value"),
        ("\"tab\there\"", "line 1, column 5: control character inside a string; write it as an escape such as \\n"),
        ("tru", "line 1, column 4: invalid literal; expected 'true'"),
        ("1.", "line 1, column 3: expected a digit after '.'"),
    ])
    func reportsWhereParsingFailed(text: String, message: String) {
        #expect(errorMessage { _ = try JSONValue.parse(text) } == message)
    }

    @Test func refusesNestingDeeperThanTheLimit() {
        let deep = String(repeating: "[", count: 300) + String(repeating: "]", count: 300)
        #expect(errorMessage { _ = try JSONValue.parse(deep) }?.hasSuffix("nesting deeper than 256 levels") == true)
        let fine = String(repeating: "[", count: 200) + String(repeating: "]", count: 200)
        #expect((try? JSONValue.parse(fine)) != nil)
    }
}
