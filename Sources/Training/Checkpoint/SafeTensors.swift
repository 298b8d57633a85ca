import Tensors
// The safetensors format (https://github.com/huggingface/safetensors), which PyTorch, JAX and MLX
// users can open directly:
//   [8 bytes: header length N, little-endian UInt64]
//   [N bytes: JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//                   "__metadata__": {"key": "value"}}, padded with spaces]
//   [data buffer: each tensor's bytes, row-major, little-endian; offsets relative to the buffer start]
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Element types of safetensors entries, spelled as in the header.
public enum SafeTensorsDType: String, Sendable, CaseIterable {
    case f32 = "F32"
    case f64 = "F64"
    case bf16 = "BF16"
    case f16 = "F16"
    case i32 = "I32"
    case i64 = "I64"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .bf16, .f16: return 2
        }
    }
}

/// One named tensor of a safetensors file: its element type, shape and raw little-endian bytes.
///
/// ```swift
/// let w = SafeTensorsEntry(name: "wte.weight", shape: [256, 64], float32: weights)
/// ```
public struct SafeTensorsEntry: Sendable, Equatable {
    /// The tensor's name, by its place in the module tree, e.g. `blocks.3.mlp.fc1.weight`.
    public var name: String
    public var dtype: SafeTensorsDType
    public var shape: [Int]
    /// `shape.reduce(1, *) * dtype.byteSize` bytes, row-major, little-endian.
    public var bytes: [UInt8]

    public init(name: String, dtype: SafeTensorsDType, shape: [Int], bytes: [UInt8]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    /// An F32 entry holding `values`.
    ///
    /// - Precondition: `values.count` is the product of `shape`.
    public init(name: String, shape: [Int], float32 values: [Float]) {
        guarantee(values.count == shape.reduce(1, *),
                     "SafeTensorsEntry \(name): \(values.count) values do not fill shape \(shape)")
        var bytes = [UInt8](repeating: 0, count: values.count * 4)
        bytes.withUnsafeMutableBytes { raw in
            for (i, v) in values.enumerated() { raw.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
        }
        self.init(name: name, dtype: .f32, shape: shape, bytes: bytes)
    }

    /// The elements of an F32 entry.
    ///
    /// - Precondition: `dtype == .f32`.
    public var float32Values: [Float] {
        guarantee(dtype == .f32, "SafeTensorsEntry \(name): float32Values of a \(dtype.rawValue) entry")
        return bytes.withUnsafeBytes { raw in
            (0..<(raw.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        }
    }

    /// Number of elements, `shape`'s product; nil if it overflows `Int`.
    var elementCount: Int? {
        var n = 1
        for d in shape {
            let (product, overflow) = n.multipliedReportingOverflow(by: d)
            if overflow { return nil }
            n = product
        }
        return n
    }

    /// Bytes that `shape` and `dtype` call for; nil if that overflows `Int`.
    var expectedByteCount: Int? {
        guard let n = elementCount else { return nil }
        let (bytes, overflow) = n.multipliedReportingOverflow(by: dtype.byteSize)
        return overflow ? nil : bytes
    }
}

/// The content of a safetensors file: its tensors by name and its string metadata.
public struct SafeTensorsFile: Sendable {
    /// The tensors, by name.
    public var entries: [String: SafeTensorsEntry]
    /// The `__metadata__` map (empty if the file has none).
    public var metadata: [String: String]

    public init(entries: [String: SafeTensorsEntry], metadata: [String: String]) {
        self.entries = entries
        self.metadata = metadata
    }

    /// Tensor names, sorted.
    public var names: [String] { entries.keys.sorted() }

    /// The tensor named `name`, or nil.
    public subscript(name: String) -> SafeTensorsEntry? { entries[name] }
}

/// A safetensors file could not be written or read; the message says what was wrong and what to do.
public struct SafeTensorsError: Error, CustomStringConvertible, Sendable {
    /// The whole message, ready to print: one line (control characters escaped).
    public let description: String

    public init(description: String) { self.description = description.oneLine }
}

/// Reading and writing safetensors files.
///
/// ```swift
/// try SafeTensors.write(entries, metadata: ["step": "1200"], to: "run/checkpoint/model.safetensors")
/// let file = try SafeTensors.read(path: "run/checkpoint/model.safetensors")
/// let wte = file["wte.weight"]!.float32Values
/// ```
public enum SafeTensors {
    /// Headers larger than this are refused before allocating: the reference implementation uses the
    /// same limit, and a larger "length" means the first 8 bytes are not a safetensors header.
    static let maximumHeaderLength = 100_000_000

    /// Writes `entries` and `metadata` to `path` atomically (temporary file, fsync, rename).
    /// Entries are stored sorted by name, contiguously; the header is padded with spaces to a multiple
    /// of 8 bytes so the data buffer starts aligned.
    ///
    /// Throws if names repeat or are empty or `__metadata__`, or an entry's byte count differs from
    /// its shape's product times its element size.
    public static func write(_ entries: [SafeTensorsEntry], metadata: [String: String] = [:], to path: String) throws {
        let sorted = entries.sorted { $0.name < $1.name }
        var members: [JSONMember] = []
        if !metadata.isEmpty {
            let pairs = metadata.keys.sorted().map { JSONMember($0, .string(metadata[$0]!)) }
            members.append(JSONMember("__metadata__", .object(pairs)))
        }
        var offset = 0
        var previousName: String?
        for entry in sorted {
            if entry.name.isEmpty || entry.name == "__metadata__" {
                throw SafeTensorsError(description: "\(path): cannot write a tensor named '\(entry.name)'; "
                    + "the name is reserved or empty — rename the parameter")
            }
            if entry.name == previousName {
                throw SafeTensorsError(description: "\(path): two tensors are named '\(entry.name)'; "
                    + "names must be unique — rename one of them")
            }
            previousName = entry.name
            if let bad = entry.shape.first(where: { $0 < 0 }) {
                throw SafeTensorsError(description: "\(path): tensor '\(entry.name)' has a negative dimension "
                    + "\(bad) in shape \(entry.shape)")
            }
            guard let expected = entry.expectedByteCount, expected == entry.bytes.count else {
                throw SafeTensorsError(description: "\(path): tensor '\(entry.name)' has \(Format.count(entry.bytes.count)) "
                    + "bytes but shape \(entry.shape) of \(entry.dtype.rawValue) needs "
                    + "\(entry.expectedByteCount.map(Format.count) ?? "more than Int.max"); fix the entry before writing")
            }
            let end = offset + entry.bytes.count
            members.append(JSONMember(entry.name, .object([
                JSONMember("dtype", .string(entry.dtype.rawValue)),
                JSONMember("shape", .array(entry.shape.map { .int($0) })),
                JSONMember("data_offsets", .array([.int(offset), .int(end)])),
            ])))
            offset = end
        }
        var header = Array(JSONValue.object(members).serialized().utf8)
        header.append(contentsOf: repeatElement(UInt8(ascii: " "), count: (8 - header.count % 8) % 8))
        var lengthField = [UInt8](repeating: 0, count: 8)
        lengthField.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(header.count).littleEndian, as: UInt64.self) }

        try AtomicFile.write(to: path) { out in
            try out.write(lengthField)
            try out.write(header)
            for entry in sorted { try out.write(entry.bytes) }
        }
    }

    /// Reads and validates the safetensors file at `path`.
    ///
    /// Throws, with a message naming the problem, for: a missing file; a file shorter than 8 bytes; a
    /// header length beyond the end of the file; a header that is not a JSON object; an entry missing
    /// `dtype`, `shape` or `data_offsets`, or with a malformed one; an unknown dtype; offsets that run
    /// backwards, reach past the data buffer, or overlap another tensor's; a byte span that differs from
    /// the shape's product times the element size.
    public static func read(path: String) throws -> SafeTensorsFile {
        guard let file = fopen(path, "rb") else {
            let reason = String(cString: strerror(errno))
            throw SafeTensorsError(description: "\(path): cannot open (\(reason)); check the path")
        }
        defer { fclose(file) }
        let fileSize: Int
        do { fileSize = try FileSystem.fileSize(file, path: path) } catch { throw SafeTensorsError(description: "\(error)") }
        let damaged = "the file is damaged — use another copy (for a checkpoint, rerun from the previous one)"
        guard fileSize >= 8 else {
            throw SafeTensorsError(description: "\(path): the file has \(Format.count(fileSize)) bytes, fewer than the "
                + "8-byte header length that starts a safetensors file; it is truncated or not a safetensors file "
                + "— rerun from the previous checkpoint")
        }
        var lengthField = [UInt8](repeating: 0, count: 8)
        try readBytes(file, into: &lengthField, path: path)
        let rawLength = lengthField.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        let available = fileSize - 8
        guard rawLength <= UInt64(available) else {
            if rawLength > UInt64(maximumHeaderLength) {
                throw SafeTensorsError(description: "\(path): the first 8 bytes give a header length of "
                    + "\(rawLength.formattedCount) bytes, more than the \(Format.count(maximumHeaderLength)) a "
                    + "safetensors header may have and more than the \(Format.count(available)) the file holds; "
                    + "this is not a safetensors file or its start is damaged")
            }
            throw SafeTensorsError(description: "\(path): header says \(rawLength.formattedCount) bytes but the file has "
                + "\(Format.count(available)) after the 8-byte length; the file is truncated — rerun from the previous checkpoint")
        }
        let headerLength = Int(rawLength)
        var headerBytes = [UInt8](repeating: 0, count: headerLength)
        try readBytes(file, into: &headerBytes, path: path)
        let header: JSONValue
        do {
            header = try JSONValue.parse(headerBytes)
        } catch {
            throw SafeTensorsError(description: "\(path): the \(Format.count(headerLength))-byte header is not valid JSON "
                + "(\(error.description)); \(damaged)")
        }
        guard let members = header.members else {
            throw SafeTensorsError(description: "\(path): the header is \(header.kindName), not a JSON object; \(damaged)")
        }

        let bufferStart = 8 + headerLength
        let bufferSize = fileSize - bufferStart
        var metadata: [String: String] = [:]
        var spans: [(name: String, dtype: SafeTensorsDType, shape: [Int], begin: Int, end: Int)] = []
        var seen = Set<String>()
        for member in members {
            guard seen.insert(member.key).inserted else {
                throw SafeTensorsError(description: "\(path): the header names '\(member.key)' twice; \(damaged)")
            }
            if member.key == "__metadata__" {
                guard let pairs = member.value.members else {
                    throw SafeTensorsError(description: "\(path): __metadata__ is \(member.value.kindName), "
                        + "not an object of strings; \(damaged)")
                }
                for pair in pairs {
                    guard let text = pair.value.stringValue else {
                        throw SafeTensorsError(description: "\(path): __metadata__ value '\(pair.key)' is "
                            + "\(pair.value.kindName), not a string; \(damaged)")
                    }
                    metadata[pair.key] = text
                }
                continue
            }
            let name = member.key
            let what = "\(path): tensor '\(name)'"
            guard member.value.members != nil else {
                throw SafeTensorsError(description: "\(what) is described by \(member.value.kindName), not an object "
                    + "with dtype, shape and data_offsets; \(damaged)")
            }
            for field in ["dtype", "shape", "data_offsets"] where member.value[field] == nil {
                throw SafeTensorsError(description: "\(what) has no '\(field)' in the header; \(damaged)")
            }
            guard let dtypeName = member.value["dtype"]!.stringValue else {
                throw SafeTensorsError(description: "\(what) has a dtype that is \(member.value["dtype"]!.kindName), "
                    + "not a string; \(damaged)")
            }
            guard let dtype = SafeTensorsDType(rawValue: dtypeName) else {
                let known = SafeTensorsDType.allCases.map(\.rawValue).joined(separator: ", ")
                throw SafeTensorsError(description: "\(what) has dtype '\(dtypeName)', which this reader does not "
                    + "support (supported: \(known)); convert the tensor to one of them before loading")
            }
            guard let shapeItems = member.value["shape"]!.arrayValue,
                  let shape = Optional(shapeItems.compactMap(\.intValue)), shape.count == shapeItems.count,
                  shape.allSatisfy({ $0 >= 0 }) else {
                throw SafeTensorsError(description: "\(what) has shape \(member.value["shape"]!.serialized()), "
                    + "which is not a list of non-negative integers; \(damaged)")
            }
            guard let offsetItems = member.value["data_offsets"]!.arrayValue, offsetItems.count == 2,
                  let begin = offsetItems[0].intValue, let end = offsetItems[1].intValue, begin >= 0, end >= 0 else {
                throw SafeTensorsError(description: "\(what) has data_offsets "
                    + "\(member.value["data_offsets"]!.serialized()), which is not two non-negative integers "
                    + "[begin, end]; \(damaged)")
            }
            let offsets = "[\(Format.count(begin)), \(Format.count(end))]"
            guard begin <= end else {
                throw SafeTensorsError(description: "\(what) has data_offsets \(offsets), which run backwards "
                    + "(begin after end); \(damaged)")
            }
            guard end <= bufferSize else {
                throw SafeTensorsError(description: "\(what) has data_offsets \(offsets) but the data buffer has "
                    + "only \(Format.count(bufferSize)) bytes; the file is truncated or damaged — rerun from the "
                    + "previous checkpoint")
            }
            let entry = SafeTensorsEntry(name: name, dtype: dtype, shape: shape, bytes: [])
            guard let expected = entry.expectedByteCount, expected == end - begin else {
                throw SafeTensorsError(description: "\(what) has shape \(shape) of \(dtype.rawValue), which needs "
                    + "\(entry.expectedByteCount.map(Format.count) ?? "more than Int.max") bytes, but its data_offsets "
                    + "\(offsets) span \(Format.count(end - begin)); \(damaged)")
            }
            spans.append((name, dtype, shape, begin, end))
        }
        spans.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        for (a, b) in zip(spans, spans.dropFirst()) where b.begin < a.end {
            throw SafeTensorsError(description: "\(path): tensors '\(a.name)' [\(Format.count(a.begin)), "
                + "\(Format.count(a.end))] and '\(b.name)' [\(Format.count(b.begin)), \(Format.count(b.end))] overlap "
                + "in the data buffer; \(damaged)")
        }

        // One read per tensor, in file order, straight into its own array: a multi-gigabyte checkpoint
        // is never held twice.
        var entries: [String: SafeTensorsEntry] = [:]
        for span in spans {
            if fseeko(file, off_t(bufferStart + span.begin), SEEK_SET) != 0 {
                throw SafeTensorsError(description: "\(path): cannot seek to tensor '\(span.name)' "
                    + "(\(String(cString: strerror(errno)))); check the disk")
            }
            var bytes = [UInt8](repeating: 0, count: span.end - span.begin)
            try readBytes(file, into: &bytes, path: path)
            entries[span.name] = SafeTensorsEntry(name: span.name, dtype: span.dtype, shape: span.shape, bytes: bytes)
        }
        return SafeTensorsFile(entries: entries, metadata: metadata)
    }

    static func readBytes(_ file: UnsafeMutablePointer<FILE>, into bytes: inout [UInt8], path: String) throws {
        do {
            try FileSystem.readExactly(file, into: &bytes, path: path)
        } catch {
            throw SafeTensorsError(description: "\(error)")
        }
    }
}

extension UInt64 {
    /// The value with thousands separators, for messages.
    var formattedCount: String {
        self <= UInt64(Int.max) ? Format.count(Int(self)) : String(self)
    }
}
