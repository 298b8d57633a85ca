#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Training

@Suite struct MetricsLogTests {
    static let moeLoad = MoELayerLoad(layer: 1, counts: [10, 0, 30, 20], droppedFraction: 0.125,
                                      maxOverMean: 2, cv: 0.5, entropy: 1.25)
    static let records: [MetricsRecord] = [
        .train(TrainRecord(step: 10, loss: 3.5, lr: 3e-4, tokensPerSecond: 51_200.5, elapsedSeconds: 4.25)),
        .train(TrainRecord(step: 20, loss: 2.75, lr: 0.0006, tokensPerSecond: 50_000, elapsedSeconds: 8.5, moe: [moeLoad])),
        .eval(EvalRecord(step: 20, valLoss: 2.875, elapsedSeconds: 9)),
    ]

    @Test func writesTheSchemaExactly() throws {
        let dir = TemporaryDirectory()
        let log = try MetricsLog(directory: dir.file("run"))
        for record in Self.records { try log.append(record) }
        log.close()
        #expect(try readText(dir.file("run/metrics.jsonl")) == """
        {"kind":"train","step":10,"loss":3.5,"lr":0.0003,"tokens_per_s":51200.5,"elapsed_s":4.25}
        {"kind":"train","step":20,"loss":2.75,"lr":0.0006,"tokens_per_s":50000.0,"elapsed_s":8.5,\
        "moe":[{"layer":1,"counts":[10,0,30,20],"dropped_fraction":0.125,"max_over_mean":2.0,"cv":0.5,"entropy":1.25}]}
        {"kind":"eval","step":20,"val_loss":2.875,"elapsed_s":9.0}

        """)
        #expect(try readText(dir.file("run/metrics.csv")) == """
        kind,step,loss,val_loss,lr,tokens_per_s,elapsed_s
        train,10,3.5,,0.0003,51200.5,4.25
        train,20,2.75,,0.0006,50000.0,8.5
        eval,20,,2.875,,,9.0

        """)
    }

    @Test func readsBackWhatItWrote() throws {
        let dir = TemporaryDirectory()
        let log = try MetricsLog(directory: dir.path)
        for record in Self.records { try log.append(record) }
        #expect(try MetricsLog.read(path: log.jsonlPath) == Self.records)
    }

    @Test func reopeningAppendsWithoutASecondHeader() throws {
        let dir = TemporaryDirectory()
        do {
            let log = try MetricsLog(directory: dir.path)
            try log.append(Self.records[0])
        }
        let log = try MetricsLog(directory: dir.path)
        try log.append(Self.records[2])
        log.close()
        #expect(try MetricsLog.read(path: dir.file("metrics.jsonl")) == [Self.records[0], Self.records[2]])
        let csv = try readText(dir.file("metrics.csv")).split(separator: "\n")
        #expect(csv.count == 3 && csv.filter { $0.hasPrefix("kind,") }.count == 1)
    }

    @Test func divergedLossIsWrittenAsNullAndReadAsNaN() throws {
        let dir = TemporaryDirectory()
        let log = try MetricsLog(directory: dir.path)
        try log.append(.train(TrainRecord(step: 1, loss: .nan, lr: 1, tokensPerSecond: .infinity, elapsedSeconds: 1)))
        log.close()
        #expect(try readText(dir.file("metrics.jsonl")).contains("\"loss\":null,\"lr\":1.0,\"tokens_per_s\":null"))
        #expect(try readText(dir.file("metrics.csv")).contains("train,1,nan,,1.0,inf,1.0"))
        guard case .train(let back) = try MetricsLog.read(path: dir.file("metrics.jsonl"))[0] else {
            Issue.record("not a train record")
            return
        }
        #expect(back.loss.isNaN && back.tokensPerSecond.isNaN)
    }

    @Test func aTornLastLineIsSkippedButADamagedMiddleLineIsAnError() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("metrics.jsonl")
        let good = "{\"kind\":\"eval\",\"step\":5,\"val_loss\":2.0,\"elapsed_s\":1.0}\n"
        writeText(good + "{\"kind\":\"train\",\"st", to: path)
        #expect(try MetricsLog.read(path: path).count == 1)
        writeText(good + "{\"kind\":\"train\",\"st\n" + good, to: path)
        #expect(errorMessage { _ = try MetricsLog.read(path: path) } == "\(path), line 2: not valid JSON (line 1, "
            + "column 20: unexpected end of text inside a string; a '\"' is missing); the file was edited or damaged "
            + "— fix or delete that line")
    }

    @Test(arguments: [
        ("{\"kind\":\"eval\",\"step\":1,\"elapsed_s\":1}", "missing key 'val_loss'"),
        ("{\"kind\":\"eval\",\"step\":1.5,\"val_loss\":1,\"elapsed_s\":1}", "'step' is a number, expected an integer"),
        ("{\"kind\":\"bench\",\"step\":1}", "unknown kind 'bench'; expected \"train\" or \"eval\""),
        ("[1]", "an array, not a JSON object"),
        ("{\"kind\":\"train\",\"step\":1,\"loss\":1,\"lr\":1,\"tokens_per_s\":1,\"elapsed_s\":1,\"moe\":[{\"layer\":0,\"counts\":[1,\"x\"]}]}",
         "'counts' is an array, expected an array of integers"),
    ])
    func malformedRecords(line: String, reason: String) {
        let dir = TemporaryDirectory()
        let path = dir.file("metrics.jsonl")
        writeText(line + "\n", to: path)
        #expect(errorMessage { _ = try MetricsLog.read(path: path) }
            == "\(path), line 1: \(reason); the file was edited or damaged — fix or delete that line")
    }

    @Test func missingFile() {
        #expect(errorMessage { _ = try MetricsLog.read(path: "/nonexistent/metrics.jsonl") }
            == "/nonexistent/metrics.jsonl: cannot read the metrics (No such file or directory); check that the run "
            + "directory has a metrics.jsonl")
    }

    @Test func loadStatisticsFromCounts() {
        let counts = [10, 0, 30, 20]
        let load = MoELayerLoad(layer: 0, counts: counts, droppedFraction: 0)
        // Reference by hand: mean 15, max 30; deviations -5, -15, 15, 5 → variance 125.
        #expect(abs(load.maxOverMean - 2) < 1e-12)
        #expect(abs(load.cv - 125.0.squareRoot() / 15) < 1e-12)
        let shares = [10.0 / 60, 30.0 / 60, 20.0 / 60]
        #expect(abs(load.entropy - -shares.map { $0 * log($0) }.reduce(0, +)) < 1e-12)
        let balanced = MoELayerLoad(layer: 0, counts: [5, 5, 5, 5], droppedFraction: 0)
        #expect(balanced.maxOverMean == 1 && balanced.cv == 0 && abs(balanced.entropy - log(4.0)) < 1e-12)
        let idle = MoELayerLoad(layer: 0, counts: [0, 0], droppedFraction: 0)
        #expect(idle.maxOverMean == 0 && idle.cv == 0 && idle.entropy == 0)
    }
}
