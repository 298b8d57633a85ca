/// Stops the program with `message` when `condition` is false: the tensor API's check for misuse
/// (mismatched shapes, wrong dtypes), like an out-of-range `Array` index.
///
/// Unlike `precondition`, the message is printed in optimized builds too, so a user of a release
/// binary learns which op and which shapes were wrong.
@inline(__always)
public func guarantee(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                      file: StaticString = #fileID, line: UInt = #line) {
    if _slowPath(!condition()) { fatalError(message(), file: file, line: line) }
}
