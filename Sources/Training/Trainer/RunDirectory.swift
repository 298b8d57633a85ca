#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The checks and repairs of a run's output directory, apart from the training loop: whether a fresh
/// run may start there, and what to do before the first step (create it, prove it writable, clean up
/// after a writer that died, forget metrics of steps a resume will train again).
enum RunDirectory {
    /// The files a run writes, which `--overwrite` removes (and nothing else).
    static func isRunFile(_ name: String) -> Bool {
        [Checkpoint.latestFile, Checkpoint.stateFile, "metrics.jsonl", "metrics.csv", "report.html"].contains(name)
            || name.hasPrefix("checkpoint-")
    }

    /// Throws unless a fresh run may start in `out`: nothing there, an empty directory, or a
    /// directory without run files; with `overwrite`, a directory holding a run is fine too (its run
    /// files are removed by ``prepare(_:resumedAt:overwrite:)``). Each refusal says which way out fits.
    static func checkFresh(_ out: String, overwrite: Bool) throws {
        guard FileSystem.exists(out) else { return }
        guard FileSystem.isDirectory(out) else {
            throw TrainingError("--out \(out): a file is in the way; choose another --out or remove the file")
        }
        if overwrite { return }
        let names = try FileSystem.listDirectory(out)
        let runFiles = names.filter { $0 == Checkpoint.latestFile || $0 == "metrics.jsonl" || $0.hasPrefix("checkpoint-") }
        guard !runFiles.isEmpty else { return }
        let hasCheckpoint = names.contains(Checkpoint.latestFile)
            || names.contains { $0.hasPrefix("checkpoint-") && AtomicFile.temporaryName($0) == nil }
        if hasCheckpoint {
            throw TrainingError("--out \(out): already holds a run (\(runFiles.prefix(3).joined(separator: ", "))); "
                + "continue it with --resume \(out), start it over with --overwrite (deletes its checkpoints and "
                + "metrics), or choose another --out")
        }
        throw TrainingError("--out \(out): holds the metrics of a run that stopped before its first checkpoint, so "
            + "there is nothing to resume; start it over with --overwrite (deletes its metrics), or choose another --out")
    }

    /// The refusal for `--resume DIR` where DIR has metrics but no checkpoint; nil where that is not the case.
    static func resumeWithoutCheckpoint(_ path: String) -> TrainingError? {
        guard FileSystem.isDirectory(path), let names = try? FileSystem.listDirectory(path),
              names.contains("metrics.jsonl"), !names.contains(Checkpoint.latestFile),
              !names.contains(where: { $0.hasPrefix("checkpoint-") && AtomicFile.temporaryName($0) == nil }) else { return nil }
        return TrainingError("--resume \(path): the run stopped before its first checkpoint, so there is nothing to "
            + "resume; start it over with `fastmoe train --out \(path) --overwrite` and the run's settings")
    }

    /// Makes `out` ready for the first step and returns notes for the console: creates it, removes
    /// the run files with `overwrite`, removes temporaries of dead writers, drops metrics past
    /// `resumedAt`, and proves that a file can be created there (a read-only directory would
    /// otherwise fail only at the first checkpoint, after the training it could not save).
    static func prepare(_ out: String, resumedAt: Int?, overwrite: Bool) throws -> [String] {
        var notes: [String] = []
        try FileSystem.makeDirectories(out)
        try checkWritable(out)
        if overwrite {
            let old = try FileSystem.listDirectory(out).filter(isRunFile)
            for name in old { try FileSystem.removeRecursively(out + "/" + name) }
            if !old.isEmpty { notes.append("--overwrite: removed the earlier run's \(old.joined(separator: ", "))") }
        }
        let removed = try AtomicFile.removeAbandonedTemporaries(in: out)
        if !removed.isEmpty {
            notes.append("removed \(removed.joined(separator: ", ")), left by a writer that stopped mid-write")
        }
        if let step = resumedAt {
            let dropped = try MetricsLog.dropRecords(after: step, in: out)
            if dropped > 0 {
                notes.append("dropped \(dropped) metrics record\(dropped == 1 ? "" : "s") of steps after \(step), "
                    + "the checkpoint this run resumes from; those steps are trained again")
            }
        }
        return notes
    }

    /// Creates and removes a probe file in `directory`, throwing a message that says what to do.
    static func checkWritable(_ directory: String) throws {
        let probe = directory + "/.fastmoe-write-test.tmp-\(FileSystem.processID)"
        let fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else {
            let reason = String(cString: strerror(errno))
            throw TrainingError("\(directory): cannot write in the output directory (\(reason)), so no checkpoint "
                + "could be saved; make it writable (chmod u+w \(directory)) or choose another --out "
                + "(to continue a run elsewhere, copy its directory and --resume the copy)")
        }
        close(fd)
        unlink(probe)
    }
}
