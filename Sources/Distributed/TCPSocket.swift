#if canImport(Glibc)
import Glibc
#endif

/// A TCP socket over POSIX calls: just what the rendezvous store needs (IPv4, blocking sends,
/// length-prefixed frames read with a deadline).
final class TCPSocket: @unchecked Sendable {
    let descriptor: Int32

    init(descriptor: Int32) { self.descriptor = descriptor }

    deinit { close(descriptor) }

    /// Listens on every interface at `port` (`0.0.0.0`, as torchrun's store does).
    /// - Throws: ``DistributedError`` saying the port is in use, or why the socket could not be made.
    static func listen(port: Int) throws -> TCPSocket {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw DistributedError("cannot create a socket: \(errorText())") }
        let listener = TCPSocket(descriptor: fd)
        var yes: Int32 = 1
        // Lets a restarted job reuse a port still in TIME_WAIT; a live listener still refuses the bind.
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = INADDR_ANY
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            if errno == EADDRINUSE {
                throw DistributedError("rank 0 cannot serve the rendezvous store on port \(port): the port is in use (another job, or a previous run still holding it); choose another MASTER_PORT")
            }
            throw DistributedError("rank 0 cannot serve the rendezvous store on port \(port): \(errorText()); choose another MASTER_PORT")
        }
        guard Glibc.listen(fd, 128) == 0 else { throw DistributedError("cannot listen on port \(port): \(errorText())") }
        return listener
    }

    /// Connects to `host:port` once.
    /// - Throws: ``DistributedError`` for a host that does not resolve or a refused connection.
    static func connect(host: String, port: Int) throws -> TCPSocket {
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>? = nil
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let list else {
            throw DistributedError("cannot resolve MASTER_ADDR \"\(host)\": \(String(cString: gai_strerror(status))); set it to rank 0's host name or IPv4 address")
        }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var entry: UnsafeMutablePointer<addrinfo>? = list
        while let info = entry {
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
            if fd >= 0 {
                if Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 {
                    var yes: Int32 = 1
                    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &yes, socklen_t(MemoryLayout<Int32>.size))
                    return TCPSocket(descriptor: fd)
                }
                lastError = errorText()
                close(fd)
            }
            entry = info.pointee.ai_next
        }
        throw DistributedError(lastError)
    }

    /// Accepts a waiting connection (call when `poll` says the listener is readable).
    func accept() -> TCPSocket? {
        let fd = Glibc.accept(descriptor, nil, nil)
        return fd >= 0 ? TCPSocket(descriptor: fd) : nil
    }

    /// Sends one frame: a 4-byte big-endian length, then the payload.
    func sendFrame(_ payload: [UInt8]) throws {
        var bytes = withUnsafeBytes(of: UInt32(payload.count).bigEndian, Array.init)
        bytes += payload
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw DistributedError("the connection to the rendezvous store broke: \(errorText())") }
            sent += n
        }
    }

    /// Reads one frame, waiting until `deadline` (seconds on the monotonic clock).
    func receiveFrame(deadline: Double, limit: Int = TCPSocket.frameLimit) throws -> [UInt8] {
        let header = try receive(4, deadline: deadline)
        let length = Int(header.reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        guard length <= limit else { throw DistributedError("a rendezvous message of \(length) bytes is larger than the limit of \(limit); is another program listening on MASTER_PORT?") }
        return try receive(length, deadline: deadline)
    }

    /// The largest message accepted (the values stored are ids and small records).
    static let frameLimit = 16 << 20

    private func receive(_ count: Int, deadline: Double) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var received = 0
        while received < count {
            guard waitReadable(until: deadline) else { throw TimedOut() }
            let n = bytes[received...].withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw DistributedError("the rendezvous store closed the connection (did rank 0 exit?)") }
            received += n
        }
        return bytes
    }

    /// Whether data (or a hang-up) arrived before `deadline`.
    func waitReadable(until deadline: Double) -> Bool {
        while true {
            let left = deadline - monotonicSeconds()
            if left <= 0 { return false }
            var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            let n = poll(&entry, 1, Int32(min(left * 1000, 1000).rounded(.up)))
            if n > 0 { return true }
            if n < 0 && errno != EINTR { return true }  // let recv report the error
        }
    }

    /// Thrown when a frame does not arrive in time.
    struct TimedOut: Error {}
}

/// Seconds on the monotonic clock (deadlines must not jump with the wall clock).
func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) * 1e-9
}

/// `strerror(errno)`.
func errorText() -> String { String(cString: strerror(errno)) }
