import Testing
@testable import Training

@Suite struct ByteTokenizerTests {
    let tokenizer = ByteTokenizer()

    @Test func vocabularyIsOnePerByte() {
        #expect(ByteTokenizer.vocabularySize == 256)
        #expect(tokenizer.vocabularySize == 256)
    }

    @Test func encodesUTF8Bytes() {
        // "7*8=56" in ASCII, and "é" as its two UTF-8 bytes C3 A9.
        #expect(tokenizer.encode("7*8=56") == [55, 42, 56, 61, 53, 54])
        #expect(tokenizer.encode("é") == [0xC3, 0xA9])
        #expect(tokenizer.encode("") == [])
    }

    @Test(arguments: ["", "hello", "12+35=47\nsort 5 2 9 -> 2 5 9", "héllo wörld 🌍 日本語", "tab\tnull\u{0}end"])
    func roundTrips(text: String) {
        #expect(tokenizer.decode(tokenizer.encode(text)) == text)
    }

    @Test func invalidUTF8BecomesReplacementCharacters() {
        #expect(tokenizer.decode([0xFF, 65]) == "\u{FFFD}A")
        // A 3-byte sequence cut after 2 bytes, as a sampled model can produce.
        let cut = tokenizer.decode([65, 0xE6, 0x97])
        #expect(cut.hasPrefix("A"))
        #expect(cut.unicodeScalars.dropFirst().allSatisfy { $0 == "\u{FFFD}" })
        #expect(cut.unicodeScalars.count >= 2)
    }
}
