/// Stops with `message` when `condition` is false, printing the message in optimized builds too
/// (`precondition` does not). The Tensors target has the public twin for the layers above.
@inline(__always)
func guarantee(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
               file: StaticString = #fileID, line: UInt = #line) {
    if _slowPath(!condition()) { fatalError(message(), file: file, line: line) }
}
