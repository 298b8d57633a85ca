/// The rendezvous store's requests, as bytes on the wire (one length-prefixed frame each).
///
/// Every request gets exactly one reply: `[0] + payload` on success, `[1] + message` when the store
/// refuses (the message is shown to the user as is), `[2]` for a key not set yet.
enum StoreRequest: Equatable {
    /// A rank introduces itself; `magic` tells a FastMoE store from anything else on the port.
    case join(rank: Int, worldSize: Int)
    /// Which ranks have joined (or the failure that stopped the job).
    case status
    case set(key: String, value: [UInt8])
    case get(key: String)
    /// Adds to an integer counter (created at 0) and returns the new value: barriers count with it.
    case add(key: String, delta: Int)

    static let magic = "fastmoe-store-1"

    var bytes: [UInt8] {
        var w = ByteWriter()
        switch self {
        case let .join(rank, worldSize): w.byte(1); w.string(Self.magic); w.int(rank); w.int(worldSize)
        case .status: w.byte(2)
        case let .set(key, value): w.byte(3); w.string(key); w.bytes(value)
        case let .get(key): w.byte(4); w.string(key)
        case let .add(key, delta): w.byte(5); w.string(key); w.int(delta)
        }
        return w.buffer
    }

    init?(bytes: [UInt8]) {
        var r = ByteReader(bytes)
        switch r.byte() {
        case 1:
            guard r.string() == Self.magic, let rank = r.int(), let size = r.int() else { return nil }
            self = .join(rank: rank, worldSize: size)
        case 2: self = .status
        case 3:
            guard let key = r.string(), let value = r.bytes() else { return nil }
            self = .set(key: key, value: value)
        case 4:
            guard let key = r.string() else { return nil }
            self = .get(key: key)
        case 5:
            guard let key = r.string(), let delta = r.int() else { return nil }
            self = .add(key: key, delta: delta)
        default: return nil
        }
        guard r.atEnd else { return nil }
    }
}

/// Appends big-endian integers and length-prefixed byte strings.
struct ByteWriter {
    var buffer: [UInt8] = []
    mutating func byte(_ b: UInt8) { buffer.append(b) }
    mutating func int(_ v: Int) { buffer += withUnsafeBytes(of: Int64(v).bigEndian, Array.init) }
    mutating func bytes(_ b: [UInt8]) { int(b.count); buffer += b }
    mutating func string(_ s: String) { bytes(Array(s.utf8)) }
}

/// Reads what `ByteWriter` wrote; nil for anything truncated or malformed.
struct ByteReader {
    private let data: [UInt8]
    private var position = 0
    init(_ data: [UInt8]) { self.data = data }

    var atEnd: Bool { position == data.count }

    mutating func byte() -> UInt8? {
        guard position < data.count else { return nil }
        defer { position += 1 }
        return data[position]
    }

    mutating func int() -> Int? {
        guard position + 8 <= data.count else { return nil }
        defer { position += 8 }
        return Int(Int64(bitPattern: data[position..<position + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }))
    }

    mutating func bytes() -> [UInt8]? {
        guard let n = int(), n >= 0, position + n <= data.count else { return nil }
        defer { position += n }
        return Array(data[position..<position + n])
    }

    mutating func string() -> String? { bytes().map { String(decoding: $0, as: UTF8.self) } }

    /// The rest of the data.
    mutating func rest() -> [UInt8] {
        defer { position = data.count }
        return Array(data[position...])
    }
}
