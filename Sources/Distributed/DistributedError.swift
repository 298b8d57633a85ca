/// A failure caused by something outside the program: the environment a launcher set, a peer over
/// the network, a missing MPI library. The message says what was wrong and what to do.
///
/// ```swift
/// do { _ = try LaunchEnvironment.detect() } catch let error as DistributedError { print(error) }
/// ```
public struct DistributedError: Error, CustomStringConvertible, Equatable {
    public let message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}
