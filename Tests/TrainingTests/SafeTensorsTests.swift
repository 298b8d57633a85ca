import Testing
@testable import Training

/// Little-endian bytes of integers, written out by shifting (a second route to what the writer stores).
func littleEndianBytes<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
    values.flatMap { v in (0..<(T.bitWidth / 8)).map { UInt8(truncatingIfNeeded: v >> ($0 * 8)) } }
}

/// A safetensors file from a header text and a data buffer, without the writer: for damaged fixtures.
func rawSafeTensors(header: String, data: [UInt8]) -> [UInt8] {
    let h = Array(header.utf8)
    return littleEndianBytes([UInt64(h.count)]) + h + data
}

@Suite struct SafeTensorsTests {
    static let entries = [
        SafeTensorsEntry(name: "wte.weight", shape: [2, 3], float32: [1, -2, 3.5, 0, 1e-8, -7]),
        SafeTensorsEntry(name: "blocks.0.mlp.experts", dtype: .i64, shape: [2], bytes: littleEndianBytes([Int64(-1), 1 << 40])),
        SafeTensorsEntry(name: "a.scalar", dtype: .f64, shape: [], bytes: littleEndianBytes([(2.5 as Double).bitPattern])),
        SafeTensorsEntry(name: "empty", dtype: .bf16, shape: [0, 4], bytes: []),
        SafeTensorsEntry(name: "half", dtype: .f16, shape: [3], bytes: [0, 0x3C, 0, 0x40, 0, 0xC0]),
        SafeTensorsEntry(name: "counts", dtype: .i32, shape: [1, 1, 2], bytes: littleEndianBytes([Int32(7), -3])),
    ]

    @Test func roundTripKeepsEveryEntryAndTheMetadata() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("model.safetensors")
        try SafeTensors.write(Self.entries, metadata: ["step": "1200", "format": "pt"], to: path)
        let file = try SafeTensors.read(path: path)
        #expect(file.names == Self.entries.map(\.name).sorted())
        for entry in Self.entries { #expect(file[entry.name] == entry) }
        #expect(file.metadata == ["step": "1200", "format": "pt"])
        #expect(file["wte.weight"]!.float32Values == [1, -2, 3.5, 0, 1e-8, -7])
        #expect(try FileSystem.listDirectory(dir.path) == ["model.safetensors"])  // no temporary left behind
    }

    @Test func layoutIsLengthHeaderBufferWithSortedContiguousEntries() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("m.safetensors")
        try SafeTensors.write(Self.entries, metadata: ["k": "v"], to: path)
        let bytes = try FileSystem.readFile(path)
        let length = (0..<8).reduce(0) { $0 | Int(bytes[$1]) << ($1 * 8) }
        #expect((8 + length) % 8 == 0)
        let header = String(decoding: bytes[8..<(8 + length)], as: UTF8.self)
        #expect(header.hasPrefix("{\"__metadata__\":{\"k\":\"v\"}"))
        // Padding is spaces only, after the closing brace.
        let trimmed = header.reversed().drop { $0 == " " }
        #expect(trimmed.first == "}" && header.count - trimmed.count < 8)
        // Names appear in sorted order, and the buffer is the entries' bytes in that order.
        let sorted = Self.entries.sorted { $0.name < $1.name }
        let positions = sorted.map { header.ranges(of: "\"\($0.name)\":{").first!.lowerBound }
        #expect(positions == positions.sorted())
        #expect(header.contains("\"a.scalar\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]}"))
        #expect(Array(bytes[(8 + length)...]) == sorted.flatMap(\.bytes))
    }

    @Test func overwritingReplacesTheFile() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("m.safetensors")
        try SafeTensors.write(Self.entries, to: path)
        try SafeTensors.write([SafeTensorsEntry(name: "only", shape: [1], float32: [4])], to: path)
        #expect(try SafeTensors.read(path: path).names == ["only"])
    }

    @Test func writeRejectsInconsistentEntries() {
        let dir = TemporaryDirectory()
        let path = dir.file("bad.safetensors")
        let short = SafeTensorsEntry(name: "w", dtype: .f32, shape: [2, 3], bytes: [UInt8](repeating: 0, count: 20))
        #expect(errorMessage { try SafeTensors.write([short], to: path) }
            == "\(path): tensor 'w' has 20 bytes but shape [2, 3] of F32 needs 24; fix the entry before writing")
        let twin = SafeTensorsEntry(name: "w", shape: [1], float32: [1])
        #expect(errorMessage { try SafeTensors.write([twin, twin], to: path) }
            == "\(path): two tensors are named 'w'; names must be unique — rename one of them")
        #expect(!FileSystem.exists(path))
    }

    // MARK: Damaged files

    /// A good file written by the writer, and its bytes.
    func goodFile(_ dir: TemporaryDirectory) throws -> (path: String, bytes: [UInt8], headerLength: Int) {
        let path = dir.file("model.safetensors")
        try SafeTensors.write(Self.entries, metadata: ["step": "3"], to: path)
        let bytes = try FileSystem.readFile(path)
        return (path, bytes, (0..<8).reduce(0) { $0 | Int(bytes[$1]) << ($1 * 8) })
    }

    func readError(_ path: String) -> String? { errorMessage { _ = try SafeTensors.read(path: path) } }

    @Test func missingFile() {
        #expect(readError("/nonexistent/model.safetensors")
            == "/nonexistent/model.safetensors: cannot open (No such file or directory); check the path")
    }

    @Test func fileShorterThanTheLengthField() throws {
        let dir = TemporaryDirectory()
        let (path, bytes, _) = try goodFile(dir)
        writeRaw(Array(bytes.prefix(5)), to: path)
        #expect(readError(path) == "\(path): the file has 5 bytes, fewer than the 8-byte header length that starts "
            + "a safetensors file; it is truncated or not a safetensors file — rerun from the previous checkpoint")
    }

    @Test func truncatedInsideTheHeader() throws {
        let dir = TemporaryDirectory()
        let (path, bytes, length) = try goodFile(dir)
        writeRaw(Array(bytes.prefix(8 + length - 10)), to: path)
        #expect(readError(path) == "\(path): header says \(Format.count(length)) bytes but the file has "
            + "\(Format.count(length - 10)) after the 8-byte length; the file is truncated — rerun from the previous checkpoint")
    }

    @Test func truncatedInsideTheData() throws {
        let dir = TemporaryDirectory()
        let (path, bytes, _) = try goodFile(dir)
        writeRaw(Array(bytes.dropLast(4)), to: path)
        // The buffer holds, by name: a.scalar 8, blocks.0.mlp.experts 16, counts 8, empty 0, half 6, then
        // wte.weight at [38, 62]; 58 bytes remain.
        #expect(readError(path) == "\(path): tensor 'wte.weight' has data_offsets [38, 62] but the data buffer has "
            + "only 58 bytes; the file is truncated or damaged — rerun from the previous checkpoint")
    }

    @Test func implausibleHeaderLength() throws {
        let dir = TemporaryDirectory()
        let (path, bytes, _) = try goodFile(dir)
        writeRaw(littleEndianBytes([UInt64(1) << 40]) + bytes.dropFirst(8), to: path)
        #expect(readError(path) == "\(path): the first 8 bytes give a header length of 1,099,511,627,776 bytes, "
            + "more than the 100,000,000 a safetensors header may have and more than the \(Format.count(bytes.count - 8)) "
            + "the file holds; this is not a safetensors file or its start is damaged")
    }

    @Test func headerThatIsNotJSON() throws {
        let dir = TemporaryDirectory()
        var (path, bytes, length) = try goodFile(dir)
        bytes[8] = UInt8(ascii: "x")  // the opening brace
        writeRaw(bytes, to: path)
        #expect(readError(path) == "\(path): the \(Format.count(length))-byte header is not valid JSON (line 1, "
            + "column 1: unexpected character 'x'; expected a value); the file is damaged — use another copy "
            + "(for a checkpoint, rerun from the previous one)")
    }

    @Test func dtypeThatDisagreesWithTheByteCount() throws {
        let dir = TemporaryDirectory()
        let (path, bytes, length) = try goodFile(dir)
        // Same length in the header, so everything else stays in place: F32 → I64 for wte.weight.
        let header = String(decoding: bytes[8..<(8 + length)], as: UTF8.self)
            .replacing("\"wte.weight\":{\"dtype\":\"F32\"", with: "\"wte.weight\":{\"dtype\":\"I64\"")
        let damaged = Array(bytes[..<8]) + Array(header.utf8) + Array(bytes[(8 + length)...])
        try #require(damaged.count == bytes.count && damaged != bytes)
        writeRaw(damaged, to: path)
        #expect(readError(path) == "\(path): tensor 'wte.weight' has shape [2, 3] of I64, which needs 48 bytes, "
            + "but its data_offsets [38, 62] span 24; the file is damaged — use another copy (for a checkpoint, "
            + "rerun from the previous one)")
    }

    @Test func unknownDtype() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("q.safetensors")
        writeRaw(rawSafeTensors(header: "{\"w\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,1]}}", data: [0]), to: path)
        #expect(readError(path) == "\(path): tensor 'w' has dtype 'Q4', which this reader does not support "
            + "(supported: F32, F64, BF16, F16, I32, I64); convert the tensor to one of them before loading")
    }

    @Test func entryMissingAField() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("m.safetensors")
        writeRaw(rawSafeTensors(header: "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", data: [0, 0, 0, 0]), to: path)
        #expect(readError(path) == "\(path): tensor 'w' has no 'shape' in the header; the file is damaged — use "
            + "another copy (for a checkpoint, rerun from the previous one)")
    }

    @Test func malformedShapeAndOffsets() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("m.safetensors")
        writeRaw(rawSafeTensors(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", data: [0, 0, 0, 0]), to: path)
        #expect(readError(path)?.hasPrefix("\(path): tensor 'w' has shape [-1], which is not a list of non-negative integers") == true)
        writeRaw(rawSafeTensors(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", data: [0, 0, 0, 0]), to: path)
        #expect(readError(path)?.hasPrefix("\(path): tensor 'w' has data_offsets [0], which is not two non-negative integers") == true)
    }

    @Test func offsetsOutsideTheBuffer() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("m.safetensors")
        writeRaw(rawSafeTensors(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[1024],\"data_offsets\":[0,4096]}}", data: [0, 0, 0, 0]), to: path)
        #expect(readError(path) == "\(path): tensor 'w' has data_offsets [0, 4,096] but the data buffer has only 4 bytes; "
            + "the file is truncated or damaged — rerun from the previous checkpoint")
    }

    @Test func offsetsThatRunBackwards() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("m.safetensors")
        writeRaw(rawSafeTensors(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", data: [UInt8](repeating: 0, count: 8)), to: path)
        #expect(readError(path) == "\(path): tensor 'w' has data_offsets [8, 4], which run backwards (begin after end); "
            + "the file is damaged — use another copy (for a checkpoint, rerun from the previous one)")
    }

    @Test func overlappingTensors() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("m.safetensors")
        let header = "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
            + "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"
        writeRaw(rawSafeTensors(header: header, data: [UInt8](repeating: 0, count: 12)), to: path)
        #expect(readError(path) == "\(path): tensors 'a' [0, 8] and 'b' [4, 12] overlap in the data buffer; "
            + "the file is damaged — use another copy (for a checkpoint, rerun from the previous one)")
    }

    @Test func headerThatIsNotAnObjectAndBadMetadata() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("m.safetensors")
        writeRaw(rawSafeTensors(header: "[1,2]", data: []), to: path)
        #expect(readError(path)?.hasPrefix("\(path): the header is an array, not a JSON object") == true)
        writeRaw(rawSafeTensors(header: "{\"__metadata__\":{\"step\":3}}", data: []), to: path)
        #expect(readError(path)?.hasPrefix("\(path): __metadata__ value 'step' is an integer, not a string") == true)
    }

    @Test func readsFilesWhoseOffsetsAreNotInNameOrder() throws {
        // Other writers (the Rust library) order the buffer by dtype alignment, not by name.
        let dir = TemporaryDirectory()
        let path = dir.file("m.safetensors")
        let header = "{\"a\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[8,12]},"
            + "\"b\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}"
        writeRaw(rawSafeTensors(header: header, data: littleEndianBytes([(0.5 as Double).bitPattern]) + littleEndianBytes([Int32(9)])), to: path)
        let file = try SafeTensors.read(path: path)
        #expect(file["a"]?.bytes == littleEndianBytes([Int32(9)]))
        #expect(file["b"]?.bytes == littleEndianBytes([(0.5 as Double).bitPattern]))
    }
}
