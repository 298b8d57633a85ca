#if canImport(Glibc)
import Glibc
#endif

/// The key-value store rank 0 serves on `MASTER_PORT` (as torchrun's `TCPStore`): ranks join it,
/// then use it to hand out the NCCL unique id and to count at barriers. One thread, `poll` over
/// the connections, every request answered at once (clients poll for keys not set yet), so the
/// server never blocks on a slow or dead client.
///
/// A rank that joins twice or with another world size stops the whole job: every later status
/// request gets that failure, so every rank reports the same cause.
final class StoreServer: @unchecked Sendable {
    let port: Int
    let worldSize: Int
    private let listener: TCPSocket
    private var thread = pthread_t()

    // State of the serving thread only.
    private var joined: [Int: Int32] = [:]   // rank → connection descriptor
    private var failure: String?
    private var values: [String: [UInt8]] = [:]

    /// Binds the port and starts serving, until the process exits (as torchrun's store does: rank 0
    /// may be done with the store while its peers still wait on it).
    /// - Throws: ``DistributedError`` when the port is in use.
    init(port: Int, worldSize: Int) throws {
        self.port = port
        self.worldSize = worldSize
        listener = try TCPSocket.listen(port: port)
        let context = Unmanaged.passRetained(self).toOpaque()
        let status = pthread_create(&thread, nil, { context in
            let server = Unmanaged<StoreServer>.fromOpaque(context!).takeRetainedValue()
            server.serve()
            return nil
        }, context)
        guard status == 0 else { throw DistributedError("cannot start the rendezvous store's thread (error \(status))") }
    }

    private func serve() {
        var clients: [TCPSocket] = []
        while true {
            var entries = [pollfd(fd: listener.descriptor, events: Int16(POLLIN), revents: 0)]
                + clients.map { pollfd(fd: $0.descriptor, events: Int16(POLLIN), revents: 0) }
            guard poll(&entries, nfds_t(entries.count), -1) > 0 else { continue }
            if entries[0].revents != 0, let client = listener.accept() { clients.append(client) }
            var closed: Set<Int32> = []
            for (client, entry) in zip(clients, entries.dropFirst()) where entry.revents != 0 {
                // A whole request arrives at once in practice; a client silent for 5 s is dropped.
                guard let frame = try? client.receiveFrame(deadline: monotonicSeconds() + 5),
                      let request = StoreRequest(bytes: frame),
                      (try? client.sendFrame(answer(request, from: client.descriptor))) != nil else {
                    closed.insert(client.descriptor)
                    continue
                }
            }
            clients.removeAll { closed.contains($0.descriptor) }
        }
    }

    private func answer(_ request: StoreRequest, from connection: Int32) -> [UInt8] {
        var w = ByteWriter()
        switch request {
        case let .join(rank, size):
            if size != worldSize {
                failure = failure ?? "rank \(rank) says the world has \(size) ranks but rank 0 says \(worldSize); set the same WORLD_SIZE on every rank"
            } else if rank < 0 || rank >= worldSize {
                failure = failure ?? "a process joined as rank \(rank), outside 0..<\(worldSize); check RANK on every rank"
            } else if let other = joined[rank], other != connection {
                failure = failure ?? "rank \(rank) joined twice; every process needs its own RANK (check the launcher's environment)"
            } else {
                joined[rank] = connection
                w.byte(0)
                return w.buffer
            }
            w.byte(1); w.string(failure!)
        case .status:
            if let failure {
                w.byte(1); w.string(failure)
            } else {
                w.byte(0)
                w.int(joined.count)
                for rank in joined.keys.sorted() { w.int(rank) }
            }
        case let .set(key, value):
            values[key] = value
            w.byte(0)
        case let .get(key):
            if let value = values[key] { w.byte(0); w.buffer += value } else { w.byte(2) }
        case let .add(key, delta):
            let current = values[key].flatMap { Int(String(decoding: $0, as: UTF8.self)) } ?? 0
            values[key] = Array(String(current + delta).utf8)
            w.byte(0); w.int(current + delta)
        }
        return w.buffer
    }
}
