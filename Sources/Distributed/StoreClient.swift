#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A connection to the rendezvous store of rank 0: set and get bytes by key, count at barriers.
///
/// Keys not set yet are polled for (every 10 ms) until the timeout, so a `get` blocks like
/// torchrun's `store.get`. Thread-safe: one request at a time.
///
/// ```swift
/// if rendezvous.rank == 0 { try rendezvous.store.set("nccl/world", id.bytes) }
/// let bytes = try rendezvous.store.get("nccl/world")
/// ```
public final class StoreClient: @unchecked Sendable {
    public let host: String
    public let port: Int
    /// How long `get` and `barrier` wait by default, in seconds.
    public let timeout: Double
    private let socket: Mutex<TCPSocket>

    init(host: String, port: Int, socket: TCPSocket, timeout: Double) {
        self.host = host
        self.port = port
        self.socket = Mutex(socket)
        self.timeout = timeout
    }

    /// Connects, retrying while rank 0 is not listening yet.
    /// - Throws: ``DistributedError`` when no connection could be made before `deadline`.
    static func connect(host: String, port: Int, deadline: Double, timeout: Double) throws -> StoreClient {
        var lastError = ""
        repeat {
            do {
                return StoreClient(host: host, port: port, socket: try TCPSocket.connect(host: host, port: port), timeout: timeout)
            } catch let error as DistributedError where error.message.hasPrefix("cannot resolve") {
                throw error
            } catch {
                lastError = "\(error)"
                usleep(20_000)
            }
        } while monotonicSeconds() < deadline
        throw DistributedError("rendezvous: could not reach rank 0's store at \(host):\(port) within \(format(timeout)) s (\(lastError)); rank 0 never arrived: check that it is running and that MASTER_ADDR and MASTER_PORT are the same on every rank")
    }

    /// Stores `value` under `key` (replacing any earlier value).
    public func set(_ key: String, _ value: [UInt8]) throws {
        _ = try request(.set(key: key, value: value))
    }

    /// The value under `key`, waiting for some rank to set it.
    /// - Throws: ``DistributedError`` when `timeout` (default: the rendezvous timeout) passes first.
    public func get(_ key: String, timeout: Double? = nil) throws -> [UInt8] {
        let limit = timeout ?? self.timeout
        let deadline = monotonicSeconds() + limit
        while true {
            if let value = try request(.get(key: key)) { return value }
            guard monotonicSeconds() < deadline else {
                throw DistributedError("rendezvous: key \"\(key)\" was not set within \(format(limit)) s at \(host):\(port); a rank that should set it may have failed (see its output), or raise FASTMOE_RENDEZVOUS_TIMEOUT")
            }
            usleep(10_000)
        }
    }

    /// Adds `delta` to the counter under `key` (0 when new) and returns the new value.
    @discardableResult
    public func add(_ key: String, _ delta: Int) throws -> Int {
        var r = ByteReader(try request(.add(key: key, delta: delta))!)
        return r.int()!
    }

    /// Returns once `count` callers have passed a barrier named `name` (each name used once).
    public func barrier(_ name: String, count: Int, timeout: Double? = nil) throws {
        let key = "barrier/" + name
        try add(key, 1)
        let limit = timeout ?? self.timeout
        let deadline = monotonicSeconds() + limit
        while try add(key, 0) < count {
            guard monotonicSeconds() < deadline else {
                throw DistributedError("rendezvous: barrier \"\(name)\" saw \(try add(key, 0)) of \(count) ranks within \(format(limit)) s; the others may have failed (see their output)")
            }
            usleep(10_000)
        }
    }

    /// Sends a request, returns the reply's payload (nil for a key not set yet).
    /// - Throws: the store's refusal (duplicate rank, ...) or a broken connection.
    func request(_ request: StoreRequest) throws -> [UInt8]? {
        try socket.withLock { socket in
            try socket.sendFrame(request.bytes)
            let reply: [UInt8]
            do {
                reply = try socket.receiveFrame(deadline: monotonicSeconds() + max(timeout, 30))
            } catch is TCPSocket.TimedOut {
                throw DistributedError("rendezvous: the store at \(host):\(port) did not answer; is another program listening on MASTER_PORT?")
            }
            var r = ByteReader(reply)
            switch r.byte() {
            case 0: return r.rest()
            case 1: throw DistributedError("rendezvous at \(host):\(port): \(r.string() ?? "refused")")
            case 2: return nil
            default: throw DistributedError("rendezvous: the program at \(host):\(port) is not a FastMoE store; choose another MASTER_PORT")
            }
        }
    }
}

/// "300" or "0.5".
func format(_ seconds: Double) -> String {
    seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
}
