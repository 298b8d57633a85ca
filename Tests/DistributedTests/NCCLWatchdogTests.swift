import CUDA
@testable import Distributed
import Testing

/// The watchdog's decisions and messages, on the CPU: a stand-in marker replaces the CUDA end event.
@Suite("NCCL watchdog logic")
struct NCCLWatchdogTests {
    final class Marker {
        var finished = false
        var error: CUDAError?
    }

    func status(_ marker: Marker) -> Result<Bool, CUDAError> {
        if let error = marker.error { return .failure(error) }
        return .success(marker.finished)
    }

    @Test func finishedCollectivesLeaveAndTheOldestUnfinishedIsTimed() {
        let start = ContinuousClock.now
        var pending = PendingCollectives<Marker>()
        let markers = (0..<3).map { _ in Marker() }
        for (i, marker) in markers.enumerated() {
            pending.append(operation: "op\(i)", enqueued: start + .seconds(i), marker: marker)
        }
        // Nothing finished, nothing late.
        #expect(pending.poll(now: start + .seconds(5), timeout: .seconds(10), isFinished: status) == nil)
        #expect(pending.count == 3)
        // op0 is late: it is reported with how long it waited.
        #expect(pending.poll(now: start + .seconds(11), timeout: .seconds(10), isFinished: status)
                == .timedOut(operation: "op0", waited: .seconds(11)))
        // op0 finishes: op1 is now the oldest, and it has waited 10 s, not more than the timeout.
        markers[0].finished = true
        #expect(pending.poll(now: start + .seconds(11), timeout: .seconds(10), isFinished: status) == nil)
        #expect(pending.count == 2)
        #expect(pending.poll(now: start + .seconds(12), timeout: .seconds(10), isFinished: status)
                == .timedOut(operation: "op1", waited: .seconds(11)))
        markers[1].finished = true
        markers[2].finished = true
        #expect(pending.poll(now: start + .seconds(100), timeout: .seconds(10), isFinished: status) == nil)
        #expect(pending.count == 0)
    }

    @Test func aFailedQueryIsReported() {
        var pending = PendingCollectives<Marker>()
        let marker = Marker()
        marker.error = .invalidArgument("illegal address")
        pending.append(operation: "allToAll", enqueued: .now, marker: marker)
        #expect(pending.poll(now: .now, timeout: .seconds(600), isFinished: status)
                == .failed(operation: "allToAll", error: "illegal address"))
    }

    @Test func manyCollectivesStayCheap() {
        var pending = PendingCollectives<Marker>()
        let done = Marker()
        done.finished = true
        for i in 0..<10_000 { pending.append(operation: "op\(i)", enqueued: .now, marker: done) }
        #expect(pending.poll(now: .now, timeout: .seconds(1), isFinished: status) == nil)
        #expect(pending.count == 0)
    }

    @Test func timeoutComesFromTheEnvironmentVariable() throws {
        #expect(try NCCLTimeout.parse(nil) == .seconds(600))
        #expect(try NCCLTimeout.parse("") == .seconds(600))
        #expect(try NCCLTimeout.parse("120") == .seconds(120))
        #expect(try NCCLTimeout.parse("2.5") == .milliseconds(2500))
        for bad in ["ten", "0", "-5", "inf"] {
            #expect {
                _ = try NCCLTimeout.parse(bad)
            } throws: { error in
                "\(error)".contains("FASTMOE_NCCL_TIMEOUT='\(bad)'") && "\(error)".contains("seconds")
            }
        }
    }

    @Test func messagesNameTheOpTheGroupTheRankAndWhatToCheck() {
        let group = "group 'world' (rank 3 of 8, cuda:3)"
        let timeout = NCCLWatchdog.message(for: .timedOut(operation: "allReduce([1024] float32, sum)", waited: .seconds(601)),
                                           group: group, timeout: .seconds(600))
        for part in ["allReduce([1024] float32, sum)", group, "601 s", "600 s", "NCCL_DEBUG=INFO", "FASTMOE_NCCL_TIMEOUT",
                     "crashed", "Aborting"] {
            #expect(timeout.contains(part), "timeout message lacks '\(part)': \(timeout)")
        }
        let async = NCCLWatchdog.asyncErrorMessage(group: group, error: "NCCL call x failed: remote process exited")
        for part in [group, "remote process exited", "NCCL_DEBUG=INFO", "crashed"] {
            #expect(async.contains(part), "asynchronous-error message lacks '\(part)': \(async)")
        }
        #expect(NCCLWatchdog.describe(.milliseconds(2500)) == "2.5 s")
        #expect(NCCLWatchdog.describe(.seconds(600)) == "600 s")
    }
}
