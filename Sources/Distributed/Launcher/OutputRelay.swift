/// Which of the launcher's streams a line goes to.
public enum LaunchOutputStream: Sendable, Equatable {
    case standardOutput, standardError
}

/// Cuts a pipe's bytes into whole lines and hands each to `emit` once complete, so that lines of
/// different ranks never interleave mid-line. A line ends at `\n`, and also at `\r` when `carriageReturnEndsLine`
/// (a progress line redrawn with `\r` then shows up as it is redrawn, each redraw prefixed).
struct LineSplitter {
    private var pending: [UInt8] = []
    let carriageReturnEndsLine: Bool
    /// A line longer than this is passed on in pieces rather than held without bound.
    static let longestLine = 1 << 20

    init(carriageReturnEndsLine: Bool) {
        self.carriageReturnEndsLine = carriageReturnEndsLine
    }

    /// Appends `bytes`; calls `emit` with every complete line, its terminator included.
    mutating func append(_ bytes: UnsafeRawBufferPointer, _ emit: (ArraySlice<UInt8>) -> Void) {
        pending.append(contentsOf: bytes)
        var start = 0
        for i in pending.indices where pending[i] == 10 || (carriageReturnEndsLine && pending[i] == 13) {
            emit(pending[start...i])
            start = i + 1
        }
        if pending.count - start > Self.longestLine {
            emit(pending[start...])
            start = pending.count
        }
        pending.removeFirst(start)
    }

    /// Emits what is left as a final line (with a newline added), at end of output.
    mutating func finish(_ emit: (ArraySlice<UInt8>) -> Void) {
        guard !pending.isEmpty else { return }
        pending.append(10)
        emit(pending[...])
        pending.removeAll()
    }
}

/// Rewrites the output of the launched processes into `[rank R] ` lines.
struct OutputRelay {
    let sink: (LaunchOutputStream, [UInt8]) -> Void

    static func prefix(rank: Int) -> [UInt8] { Array("[rank \(rank)] ".utf8) }

    /// A line from a rank's own pipe.
    func relay(_ line: ArraySlice<UInt8>, rank: Int, stream: LaunchOutputStream) {
        sink(stream, Self.prefix(rank: rank) + line)
    }

    /// A line from `mpirun --tag-output`: tagged lines get the rank prefix on the stream of their tag;
    /// `mpirun`'s own lines pass through unchanged.
    func relayTagged(_ line: ArraySlice<UInt8>, stream: LaunchOutputStream) {
        if let tagged = MPIRun.parseTaggedLine(line) {
            sink(tagged.isError ? .standardError : .standardOutput, Self.prefix(rank: tagged.rank) + tagged.text)
        } else {
            sink(stream, Array(line))
        }
    }
}
