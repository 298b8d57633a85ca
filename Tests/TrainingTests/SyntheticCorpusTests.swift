#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Training

@Suite struct SyntheticCorpusTests {
    static let text = String(decoding: SyntheticCorpus.generate(seed: 7, byteCount: 60_000), as: UTF8.self)
    /// Complete lines only: the last one may be cut at the byte count.
    static let lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)

    @Test func sameSeedSameBytesDifferentSeedDifferentBytes() {
        let a = SyntheticCorpus.generate(seed: 1, byteCount: 10_000)
        #expect(a == SyntheticCorpus.generate(seed: 1, byteCount: 10_000))
        #expect(a != SyntheticCorpus.generate(seed: 2, byteCount: 10_000))
        #expect(a == SyntheticCorpus.generate(seed: 1, byteCount: 30_000).prefix(10_000).map { $0 })
    }

    @Test(arguments: [0, 1, 17, 4096]) func exactByteCount(count: Int) {
        #expect(SyntheticCorpus.generate(byteCount: count).count == count)
    }

    @Test func splitMix64MatchesTheReferenceSequence() {
        // Outputs of the reference C implementation (Vigna, splitmix64.c) for seed 0.
        var rng = SplitMix64(seed: 0)
        #expect(rng.next() == 0xE220_A839_7B1D_CDAF)
        #expect(rng.next() == 0x6E78_9E6A_A1B9_65F4)
        #expect(rng.next() == 0x06C4_5D18_8009_454F)
    }

    @Test func everyDomainPresentAndEveryLineRecognised() {
        var counts: [String: Int] = [:]
        for line in Self.lines {
            let domain = SyntheticCorpus.domain(ofLine: line)
            #expect(domain != nil, "unrecognised line: \(line)")
            if let domain { counts[domain.name, default: 0] += 1 }
        }
        #expect(Set(counts.keys) == Set(SyntheticCorpus.domains.map(\.name)))
        // Domains are drawn uniformly: each near 1/6 of the lines.
        for (name, count) in counts {
            let share = Double(count) / Double(Self.lines.count)
            #expect(share > 0.12 && share < 0.22, "\(name): share \(share)")
        }
        for domain in SyntheticCorpus.domains {
            #expect(SyntheticCorpus.domain(ofLine: domain.example) == domain, "example of \(domain.name)")
            #expect(!domain.summary.isEmpty)
        }
    }

    @Test func arithmeticResultsAreCorrect() throws {
        var checked = 0
        for line in Self.lines where SyntheticCorpus.domain(ofLine: line)?.name == "arithmetic" {
            let sides = line.split(separator: "=")
            try #require(sides.count == 2, "\(line)")
            let op = try #require(sides[0].first(where: { "+-*".contains($0) }), "\(line)")
            let operands = sides[0].split(separator: op).compactMap { Int($0) }
            try #require(operands.count == 2, "\(line)")
            let result = try #require(Int(sides[1]), "\(line)")
            let (a, b) = (operands[0], operands[1])
            switch op {
            case "+": #expect(a + b == result, "\(line)"); #expect(a < 1000 && b < 1000)
            case "-": #expect(a - b == result, "\(line)"); #expect(result >= 0)
            default: #expect(a * b == result, "\(line)"); #expect(a < 100 && b < 100)
            }
            checked += 1
        }
        #expect(checked > 200)
    }

    @Test func sortAndReverseLinesAreCorrect() throws {
        for line in Self.lines {
            guard let domain = SyntheticCorpus.domain(ofLine: line)?.name, domain == "sort" || domain == "reverse" else { continue }
            let parts = line.split(separator: " -> ", omittingEmptySubsequences: false)
            try #require(parts.count == 2, "\(line)")
            if domain == "sort" {
                let input = parts[0].dropFirst(5).split(separator: " ").map { Int($0)! }
                let output = parts[1].split(separator: " ").map { Int($0)! }
                #expect((3...8).contains(input.count))
                // Reference: insertion sort, not the generator's sorted().
                var reference: [Int] = []
                for x in input { reference.insert(x, at: reference.firstIndex(where: { $0 > x }) ?? reference.count) }
                #expect(output == reference, "\(line)")
            } else {
                let input = Array(parts[0].dropFirst(4)), output = Array(parts[1])
                #expect((3...10).contains(input.count))
                #expect(input.allSatisfy { $0 >= "a" && $0 <= "z" })
                #expect(output.count == input.count)
                for i in input.indices { #expect(output[i] == input[input.count - 1 - i], "\(line)") }
            }
        }
    }

    @Test func lookupAnswersAreTheStoredValue() throws {
        for line in Self.lines where SyntheticCorpus.domain(ofLine: line)?.name == "lookup" {
            let halves = line.split(separator: " ? ")
            try #require(halves.count == 2, "\(line)")
            let pairs = halves[0].split(separator: " ").map { $0.split(separator: "=").map(String.init) }
            #expect((3...6).contains(pairs.count))
            #expect(Set(pairs.map { $0[0] }).count == pairs.count, "keys repeat: \(line)")
            let query = halves[1].split(separator: " ")
            try #require(query.count == 3 && query[1] == "->", "\(line)")
            let stored = pairs.first { $0[0] == String(query[0]) }
            #expect(stored?[1] == String(query[2]), "\(line)")
        }
    }

    @Test func bracketAnswersCloseThePrefixMinimally() throws {
        let pairs: [Character: Character] = ["(": ")", "[": "]", "{": "}"]
        for line in Self.lines where SyntheticCorpus.domain(ofLine: line)?.name == "brackets" {
            let parts = line.dropFirst(6).split(separator: " -> ")
            try #require(parts.count == 2, "\(line)")
            var stack: [Character] = []
            for ch in parts[0] {
                if let close = pairs[ch] { stack.append(close) } else {
                    #expect(stack.popLast() == ch, "prefix closes wrongly: \(line)")
                }
            }
            #expect(!stack.isEmpty)
            #expect(String(parts[1]) == String(stack.reversed()), "\(line)")
        }
    }

    @Test func sentencesUseTheGrammarAndAgree() {
        let g = SyntheticCorpus.Grammar.self
        let vocabulary = Set(g.singularDeterminers + g.pluralDeterminers + g.adjectives + g.singularNouns + g.pluralNouns
            + g.prepositions + g.singularTransitive + g.pluralTransitive + g.singularIntransitive + g.pluralIntransitive
            + g.adverbs + ["."])
        var checked = 0
        for line in Self.lines where SyntheticCorpus.domain(ofLine: line)?.name == "sentence" {
            let words = line.split(separator: " ").map(String.init)
            #expect(words.last == ".")
            #expect(words.allSatisfy(vocabulary.contains), "\(line)")
            // The subject's head is the first noun; the verb the first verb. They must agree in number.
            let head = words.first { g.singularNouns.contains($0) || g.pluralNouns.contains($0) }
            let verb = words.first { (g.singularTransitive + g.pluralTransitive + g.singularIntransitive + g.pluralIntransitive).contains($0) }
            if let head, let verb {
                let pluralSubject = g.pluralNouns.contains(head)
                let pluralVerb = g.pluralTransitive.contains(verb) || g.pluralIntransitive.contains(verb)
                #expect(pluralSubject == pluralVerb, "\(line)")
                checked += 1
            } else {
                Issue.record("no subject or verb: \(line)")
            }
        }
        #expect(checked > 200)
    }

    @Test func unigramEntropyMatchesHandComputedValues() {
        #expect(abs(TokenStatistics.unigramEntropy(of: [1, 2, 3, 4] as [Int32]) - log(4.0)) < 1e-12)
        let skewed = -(0.75 * log(0.75) + 0.25 * log(0.25))
        #expect(abs(TokenStatistics.unigramEntropy(of: [9, 9, 9, 300] as [Int32]) - skewed) < 1e-12)
        #expect(abs(TokenStatistics.unigramEntropy(of: [9, 9, 9, 3] as [UInt8]) - skewed) < 1e-12)
        #expect(TokenStatistics.unigramEntropy(of: [] as [Int32]) == 0)
        #expect(TokenStatistics.unigramEntropy(of: [5, 5, 5] as [UInt8]) == 0)
        let corpus = SyntheticCorpus.generate(seed: 3, byteCount: 20_000)
        let viaInt32 = TokenStatistics.unigramEntropy(of: corpus.map { Int32($0) })
        #expect(abs(TokenStatistics.unigramEntropy(of: corpus) - viaInt32) < 1e-9)
        // The corpus uses a few dozen distinct bytes: entropy well below log 256, above log 8.
        #expect(viaInt32 > log(8.0) && viaInt32 < log(64.0))
    }
}
