import Testing
@testable import Training

@Suite struct ConfigFileTests {
    static let toml = """
    # a run config
    name = "moe \\"8e\\" \\u00e9"   # trailing comment
    layers = 4
    lr = 3e-4

    steps = 10_000
    warmup = -1
    tied = true
    path = 'C:\\raw\\path'
    [moe]
    experts = 8
    top_k = 2
    capacity.factor = 1.25
    """

    @Test func parsesEveryValueKindWithLines() throws {
        let config = try ConfigFile.parse(Self.toml, path: "run.toml")
        #expect(config.values == [
            "name": .string("moe \"8e\" é"), "layers": .int(4), "lr": .double(3e-4), "steps": .int(10_000),
            "warmup": .int(-1), "tied": .bool(true), "path": .string("C:\\raw\\path"),
            "moe.experts": .int(8), "moe.top_k": .int(2), "moe.capacity.factor": .double(1.25),
        ])
        #expect(config.lines["layers"] == 3 && config.lines["moe.experts"] == 11 && config.lines["moe.capacity.factor"] == 13)
        #expect(try config.int("layers") == 4)
        #expect(try config.double("layers") == 4)  // integers are numbers too
        #expect(try config.double("lr") == 3e-4)
        #expect(try config.string("name") == "moe \"8e\" é")
        #expect(try config.bool("tied") == true)
        #expect(try config.int("absent") == nil)
    }

    @Test func windowsLineEndingsAndInfinity() throws {
        let config = try ConfigFile.parse("a = 1\r\nb = \"x\"\r\nc = -inf\r\n", path: "w.toml")
        #expect(config.values == ["a": .int(1), "b": .string("x"), "c": .double(-.infinity)])
    }

    @Test(arguments: [
        ("layers 4", "run.toml, line 1: expected '=' after 'layers'; write settings as key = value"),
        ("name = \"open", "run.toml, line 1: the string is not closed with \" on this line"),
        ("sizes = [1, 2]", "run.toml, line 1: 'sizes' is an array; arrays are not supported in run configs — give a single value"),
        ("mode = fast", "run.toml, line 1: 'fast' is not a value this config understands; write a number, true/false, or a quoted string such as \"fast\""),
        ("a = 1 2", "run.toml, line 1: unexpected '2' after the value; put one setting per line, comments after '#'"),
        ("a = ", "run.toml, line 1: 'a' has no value after '='; write e.g. a = 4"),
        ("[moe", "run.toml, line 1: expected ']' to close the section name 'moe'"),
        ("[[runs]]", "run.toml, line 1: arrays of tables ([[...]]) are not supported; use a [section] with distinct keys"),
        ("\"q\" = 1", "run.toml, line 1: quoted keys are not supported; use letters, digits, '_' and '-' in key names"),
        ("x = 1__0", "run.toml, line 1: '1__0' is not a value this config understands; write a number, true/false, or a quoted string such as \"1__0\""),
        ("s = \"bad \\q\"", "run.toml, line 1: unknown escape '\\q'; write a backslash as \\\\"),
        ("s = \"\"\"long", "run.toml, line 1: multi-line strings (\"\"\") are not supported; write the value on one line"),
        ("= 3", "run.toml, line 1: expected a key name (letters, digits, '_', '-') but found '='"),
    ])
    func tomlErrors(text: String, message: String) {
        #expect(errorMessage { _ = try ConfigFile.parse(text, path: "run.toml") } == message)
    }

    @Test func tomlErrorsNameTheRightLine() {
        #expect(errorMessage { _ = try ConfigFile.parse("# c\n\na = 1\nb = oops\n", path: "run.toml") }?
            .hasPrefix("run.toml, line 4: 'oops'") == true)
        #expect(errorMessage { _ = try ConfigFile.parse("a = 1\n\na = 2\n", path: "run.toml") }
            == "run.toml, line 3: 'a' is already set on line 1; keep one of the two")
        #expect(errorMessage { _ = try ConfigFile.parse("[m]\nk = 1\n[m]\nk = 2\n", path: "run.toml") }
            == "run.toml, line 4: 'm.k' is already set on line 2; keep one of the two")
    }

    @Test func parsesJSONWithNestedObjectsFlattened() throws {
        let json = """
        {
          "layers": 4,
          "lr": 0.001,
          "name": "dense",
          "moe": {"experts": 8, "enabled": false}
        }
        """
        let config = try ConfigFile.parse(json, path: "run.json")
        #expect(config.values == ["layers": .int(4), "lr": .double(0.001), "name": .string("dense"),
                                  "moe.experts": .int(8), "moe.enabled": .bool(false)])
        #expect(config.lines["lr"] == 3 && config.lines["moe.experts"] == 5)
    }

    @Test func jsonErrors() {
        #expect(errorMessage { _ = try ConfigFile.parse("{\n  \"a\": 1,\n  \"b\": ,\n}", path: "run.json") }
            == "run.json, line 3, column 8: unexpected character ','; expected a value; fix the JSON syntax there")
        #expect(errorMessage { _ = try ConfigFile.parse("{\n\"a\": [1]}", path: "run.json") }
            == "run.json, line 2: 'a' is an array; config values are single numbers, strings or booleans")
        #expect(errorMessage { _ = try ConfigFile.parse("{\"a\": null}", path: "run.json") }
            == "run.json, line 1: 'a' is null; give a value or leave the key out")
        #expect(errorMessage { _ = try ConfigFile.parse("[1]", path: "run.json") }
            == "run.json: the file holds an array, but a config is one JSON object such as {\"layers\": 4}")
    }

    @Test func unknownKeySuggestsTheClosestKnownOne() throws {
        let config = try ConfigFile.parse("lr = 0.1\nsteps = 10\nlayer = 3\n", path: "run.toml")
        let known: Set = ["lr", "steps", "layers", "experts"]
        #expect(errorMessage { try config.validateKeys(known: known) }
            == "run.toml: unknown key 'layer' (line 3); did you mean 'layers'? known keys: experts, layers, lr, steps")
        let far = try ConfigFile.parse("zzz = 1\n", path: "run.toml")
        #expect(errorMessage { try far.validateKeys(known: known) }
            == "run.toml: unknown key 'zzz' (line 1); known keys: experts, layers, lr, steps")
        let several = try ConfigFile.parse("expert = 1\nlr = 2\nqqq = 3\n", path: "run.toml")
        #expect(errorMessage { try several.validateKeys(known: known) }
            == "run.toml: unknown keys 'expert' (line 1, did you mean 'experts'?), 'qqq' (line 3); known keys: experts, layers, lr, steps")
        try config.validateKeys(known: known.union(["layer"]))
    }

    @Test func typeErrorsNameKeyLineAndValue() throws {
        let config = try ConfigFile.parse("lr = \"fast\"\nlayers = 2.5\n", path: "run.toml")
        #expect(errorMessage { _ = try config.double("lr") }
            == "run.toml: 'lr' (line 1) must be a number, but it is a string, \"fast\"; change the value")
        #expect(errorMessage { _ = try config.int("layers") }
            == "run.toml: 'layers' (line 2) must be an integer, but it is a number, 2.5; change the value")
        #expect(errorMessage { _ = try config.bool("layers") }
            == "run.toml: 'layers' (line 2) must be true or false, but it is a number, 2.5; change the value")
    }

    @Test func loadsFilesAndRejectsOtherExtensions() throws {
        let dir = TemporaryDirectory()
        writeText("layers = 2\n", to: dir.file("run.toml"))
        #expect(try ConfigFile.load(path: dir.file("run.toml")).values == ["layers": .int(2)])
        #expect(errorMessage { _ = try ConfigFile.load(path: dir.file("missing.toml")) }
            == "\(dir.file("missing.toml")): cannot read the config file (No such file or directory); check the path")
        writeText("layers: 2\n", to: dir.file("run.yaml"))
        #expect(errorMessage { _ = try ConfigFile.load(path: dir.file("run.yaml")) }
            == "\(dir.file("run.yaml")): config files must end in .toml or .json, this one has '.yaml'; rename it to match its format")
        writeRaw([0x61, 0x20, 0x3D, 0x20, 0xFF], to: dir.file("bin.toml"))
        #expect(errorMessage { _ = try ConfigFile.load(path: dir.file("bin.toml")) }
            == "\(dir.file("bin.toml")): the file is not valid UTF-8 text; save it as UTF-8")
    }

    @Test(arguments: [("", "", 0), ("abc", "", 3), ("layer", "layers", 1), ("kitten", "sitting", 3),
                      ("flaw", "lawn", 2), ("top_k", "topk", 1), ("same", "same", 0)])
    func editDistances(a: String, b: String, distance: Int) {
        #expect(editDistance(a, b) == distance)
        #expect(editDistance(b, a) == distance)
    }
}
