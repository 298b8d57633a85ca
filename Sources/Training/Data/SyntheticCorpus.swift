import Tensors
/// A built-in text corpus for runs without a data set: lines from several small "domains" (arithmetic,
/// a toy English grammar, sorting, reversal, key-value lookup, bracket closing), interleaved at random.
///
/// Each domain has a rule a small language model can learn (carry digits, agree verbs with subjects,
/// recall a value seen earlier in the line, close brackets in stack order), so the validation loss
/// falls well below the unigram entropy, and the domains differ enough in their bytes that MoE experts
/// have something to specialise on. Generation is integer-only and seeded, so a seed gives the same
/// bytes on every machine.
///
/// ```swift
/// let bytes = SyntheticCorpus.generate(seed: 1, byteCount: 1 << 20)
/// // 37+48=85
/// // the tired dogs near a bird follow some children .
/// // sort 41 7 88 -> 7 41 88
/// // rev kqzt -> tzqk
/// // k3=v7 k1=v2 ? k3 -> v7
/// // close ([]{( -> )})
/// ```
public enum SyntheticCorpus {
    /// One kind of line in the corpus.
    public struct Domain: Sendable, Hashable {
        /// Short identifier, e.g. `"arithmetic"`.
        public let name: String
        /// One line saying what the lines contain and what a model must learn to predict them.
        public let summary: String
        /// A line of this domain.
        public let example: String
    }

    /// The domains, in the order `generate` numbers them.
    public static let domains: [Domain] = [
        Domain(name: "arithmetic",
               summary: "sums and differences of numbers below 1000 and products below 100·100, with the exact result",
               example: "37+48=85"),
        Domain(name: "sentence",
               summary: "English-like sentences from a small grammar; verbs agree in number with their subject",
               example: "the tired dogs near a bird follow some children ."),
        Domain(name: "sort",
               summary: "3 to 8 numbers below 100, then the same numbers in ascending order",
               example: "sort 41 7 88 -> 7 41 88"),
        Domain(name: "reverse",
               summary: "3 to 10 lowercase letters, then the same letters reversed",
               example: "rev kqzt -> tzqk"),
        Domain(name: "lookup",
               summary: "3 to 6 key=value pairs, a query key, and the value stored under it",
               example: "k3=v7 k1=v2 ? k3 -> v7"),
        Domain(name: "brackets",
               summary: "an unfinished nesting of ()[]{} and the shortest sequence of brackets that closes it",
               example: "close ([]{( -> )})"),
    ]

    /// `byteCount` bytes of corpus text: whole lines, each ending in `\n`, except that the last line
    /// is cut where the count runs out. The same seed gives the same bytes.
    public static func generate(seed: UInt64 = 0, byteCount: Int) -> [UInt8] {
        guarantee(byteCount >= 0, "SyntheticCorpus.generate: byteCount \(byteCount) is negative")
        var rng = SplitMix64(seed: seed)
        var out: [UInt8] = []
        out.reserveCapacity(byteCount + 128)
        while out.count < byteCount {
            let domain = rng.below(domains.count)
            switch domain {
            case 0: arithmeticLine(&rng, into: &out)
            case 1: sentenceLine(&rng, into: &out)
            case 2: sortLine(&rng, into: &out)
            case 3: reverseLine(&rng, into: &out)
            case 4: lookupLine(&rng, into: &out)
            default: bracketLine(&rng, into: &out)
            }
            out.append(UInt8(ascii: "\n"))
        }
        out.removeLast(out.count - byteCount)
        return out
    }

    /// The domain a line of the corpus belongs to (by its form), or nil for text the corpus does not
    /// produce. Useful for per-domain losses and for seeing which expert a domain's tokens go to.
    public static func domain(ofLine line: some StringProtocol) -> Domain? {
        if line.hasPrefix("sort ") { return domains[2] }
        if line.hasPrefix("rev ") { return domains[3] }
        if line.hasPrefix("close ") { return domains[5] }
        if line.hasPrefix("k") && line.contains(" ? ") { return domains[4] }
        if let first = line.first, first.isASCII, first.isNumber { return domains[0] }
        if let word = line.split(separator: " ").first,
           Grammar.singularDeterminers.contains(String(word)) || Grammar.pluralDeterminers.contains(String(word)) {
            return domains[1]
        }
        return nil
    }

    // MARK: Domains

    static func arithmeticLine(_ rng: inout SplitMix64, into out: inout [UInt8]) {
        var a: Int, b: Int, op: String, c: Int
        switch rng.below(3) {
        case 0:
            (a, b, op) = (rng.below(1000), rng.below(1000), "+")
            c = a + b
        case 1:
            (a, b, op) = (rng.below(1000), rng.below(1000), "-")
            if a < b { swap(&a, &b) }  // results stay non-negative: one sign convention to learn
            c = a - b
        default:
            (a, b, op) = (rng.below(100), rng.below(100), "*")
            c = a * b
        }
        out.append(contentsOf: "\(a)\(op)\(b)=\(c)".utf8)
    }

    /// A tiny context-free grammar with number agreement: S → NP VP "."; NP → Det (Adj) N (PP);
    /// PP → P NP (one level); VP → Vt NP | Vi (Adv).
    enum Grammar {
        static let singularDeterminers = ["the", "a", "every", "this"]
        static let pluralDeterminers = ["the", "some", "many", "these"]
        static let adjectives = ["small", "big", "red", "quiet", "happy", "tired"]
        static let singularNouns = ["cat", "dog", "bird", "child", "teacher", "robot", "farmer"]
        static let pluralNouns = ["cats", "dogs", "birds", "children", "teachers", "robots", "farmers"]
        static let prepositions = ["near", "with", "behind", "under"]
        static let singularTransitive = ["sees", "likes", "follows", "helps"]
        static let pluralTransitive = ["see", "like", "follow", "help"]
        static let singularIntransitive = ["sleeps", "runs", "sings", "waits"]
        static let pluralIntransitive = ["sleep", "run", "sing", "wait"]
        static let adverbs = ["quickly", "quietly", "today", "again"]
    }

    static func sentenceLine(_ rng: inout SplitMix64, into out: inout [UInt8]) {
        var words: [String] = []
        let plural = rng.below(2) == 1
        nounPhrase(&rng, plural: plural, allowPP: true, into: &words)
        if rng.below(3) < 2 {
            words.append(rng.pick(plural ? Grammar.pluralTransitive : Grammar.singularTransitive))
            nounPhrase(&rng, plural: rng.below(2) == 1, allowPP: true, into: &words)
        } else {
            words.append(rng.pick(plural ? Grammar.pluralIntransitive : Grammar.singularIntransitive))
            if rng.below(2) == 1 { words.append(rng.pick(Grammar.adverbs)) }
        }
        words.append(".")
        out.append(contentsOf: words.joined(separator: " ").utf8)
    }

    static func nounPhrase(_ rng: inout SplitMix64, plural: Bool, allowPP: Bool, into words: inout [String]) {
        words.append(rng.pick(plural ? Grammar.pluralDeterminers : Grammar.singularDeterminers))
        if rng.below(2) == 1 { words.append(rng.pick(Grammar.adjectives)) }
        words.append(rng.pick(plural ? Grammar.pluralNouns : Grammar.singularNouns))
        if allowPP && rng.below(4) == 0 {
            words.append(rng.pick(Grammar.prepositions))
            nounPhrase(&rng, plural: rng.below(2) == 1, allowPP: false, into: &words)
        }
    }

    static func sortLine(_ rng: inout SplitMix64, into out: inout [UInt8]) {
        let numbers = (0..<(3 + rng.below(6))).map { _ in rng.below(100) }
        let text = numbers.map(String.init).joined(separator: " ")
        let sorted = numbers.sorted().map(String.init).joined(separator: " ")
        out.append(contentsOf: "sort \(text) -> \(sorted)".utf8)
    }

    static func reverseLine(_ rng: inout SplitMix64, into out: inout [UInt8]) {
        let letters = (0..<(3 + rng.below(8))).map { _ in UInt8(ascii: "a") + UInt8(rng.below(26)) }
        out.append(contentsOf: "rev ".utf8)
        out.append(contentsOf: letters)
        out.append(contentsOf: " -> ".utf8)
        out.append(contentsOf: letters.reversed())
    }

    static func lookupLine(_ rng: inout SplitMix64, into out: inout [UInt8]) {
        // Distinct keys (a partial shuffle of 0...9), so the answer is unambiguous.
        var keys = Array(0..<10)
        let pairs = 3 + rng.below(4)
        for i in 0..<pairs { keys.swapAt(i, i + rng.below(10 - i)) }
        let values = (0..<pairs).map { _ in rng.below(10) }
        let asked = rng.below(pairs)
        let stored = (0..<pairs).map { "k\(keys[$0])=v\(values[$0])" }.joined(separator: " ")
        out.append(contentsOf: "\(stored) ? k\(keys[asked]) -> v\(values[asked])".utf8)
    }

    static func bracketLine(_ rng: inout SplitMix64, into out: inout [UInt8]) {
        let opens: [UInt8] = Array("([{".utf8), closes: [UInt8] = Array(")]}".utf8)
        var stack: [Int] = []
        var prefix: [UInt8] = []
        let length = 2 + rng.below(14)
        for _ in 0..<length {
            // Close with probability 1/3 when something is open, so the prefix usually ends unbalanced.
            if !stack.isEmpty && rng.below(3) == 0 {
                prefix.append(closes[stack.removeLast()])
            } else {
                let kind = rng.below(3)
                stack.append(kind)
                prefix.append(opens[kind])
            }
        }
        if stack.isEmpty {  // fully closed by chance: open one more so there is something to close
            let kind = rng.below(3)
            stack.append(kind)
            prefix.append(opens[kind])
        }
        out.append(contentsOf: "close ".utf8)
        out.append(contentsOf: prefix)
        out.append(contentsOf: " -> ".utf8)
        out.append(contentsOf: stack.reversed().map { closes[$0] })
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny generator whose output is fixed by its specification,
/// unlike Swift's `SystemRandomNumberGenerator`, so corpora and samplers are reproducible everywhere.
struct SplitMix64 {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return SplitMix64.mix(state)
    }

    /// The SplitMix64 finaliser: a bijection that scrambles a counter into a well-mixed 64-bit value.
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value in `0..<bound` by multiply-high (Lemire); the bias, at most bound/2^64, is far below
    /// anything a corpus or a sampler could show.
    mutating func below(_ bound: Int) -> Int {
        guarantee(bound > 0, "SplitMix64.below: bound \(bound) must be positive")
        return Int(next().multipliedFullWidth(by: UInt64(bound)).high)
    }

    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}
