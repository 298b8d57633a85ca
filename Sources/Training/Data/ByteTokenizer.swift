import Tensors
/// The tokenizer of the byte-level models: each UTF-8 byte is one token, so the vocabulary is 256
/// and any text, in any language, is representable without a trained vocabulary.
///
/// ```swift
/// let tokenizer = ByteTokenizer()
/// let tokens = tokenizer.encode("7*8=56")   // [55, 42, 56, 61, 53, 54]
/// tokenizer.decode(tokens)                  // "7*8=56"
/// ```
public struct ByteTokenizer: Sendable {
    /// Number of distinct tokens: one per byte value.
    public static let vocabularySize = 256

    /// Number of distinct tokens: one per byte value.
    public var vocabularySize: Int { Self.vocabularySize }

    public init() {}

    /// The UTF-8 bytes of `text`, as tokens.
    public func encode(_ text: String) -> [Int32] {
        text.utf8.map { Int32($0) }
    }

    /// The text whose UTF-8 bytes are `tokens`. Sequences that are not valid UTF-8 (as a model can
    /// sample) become U+FFFD replacement characters instead of failing.
    ///
    /// - Precondition: every token is in `0..<256`; anything else is not a token of this tokenizer.
    public func decode(_ tokens: [Int32]) -> String {
        let bytes = tokens.map { token -> UInt8 in
            guarantee((0..<256).contains(token), "ByteTokenizer.decode: token \(token) is outside 0..<256")
            return UInt8(token)
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
