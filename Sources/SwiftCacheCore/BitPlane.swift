/// One bit per block, 64 blocks to a word, so that scans (flush, reclaim)
/// skip empty words and cost little per block.
struct BitPlane {
    private(set) var words: [UInt64]
    private(set) var count: UInt64

    init(count: UInt64) {
        self.count = count
        words = Array(repeating: 0, count: Int((count + 63) / 64))
    }

    /// Changes the number of blocks, keeping the bits of blocks that remain.
    mutating func resize(to newCount: UInt64) {
        let newWords = Int((newCount + 63) / 64)
        if newWords < words.count {
            words.removeLast(words.count - newWords)
        } else {
            words.append(contentsOf: repeatElement(0, count: newWords - words.count))
        }
        if newCount % 64 != 0, let last = words.indices.last {
            words[last] &= (1 << (newCount % 64)) - 1
        }
        count = newCount
    }

    subscript(block: UInt64) -> Bool {
        get { words[Int(block >> 6)] & (1 << (block & 63)) != 0 }
        set {
            let i = Int(block >> 6), bit: UInt64 = 1 << (block & 63)
            if newValue { words[i] |= bit } else { words[i] &= ~bit }
        }
    }

    mutating func clearAll() {
        for i in words.indices { words[i] = 0 }
    }

    /// The first set block in `from..<to`, if any.
    func firstSet(from: UInt64, to: UInt64) -> UInt64? {
        var block = from
        while block < to {
            let word = words[Int(block >> 6)] >> (block & 63)
            if word != 0 {
                let found = block + UInt64(word.trailingZeroBitCount)
                return found < to ? found : nil
            }
            block = (block | 63) + 1
        }
        return nil
    }

    /// The first clear block in `from..<to`, or `to`.
    func firstClear(from: UInt64, to: UInt64) -> UInt64 {
        var block = from
        while block < to {
            let word = ~words[Int(block >> 6)] >> (block & 63)
            if word != 0 {
                return min(block + UInt64(word.trailingZeroBitCount), to)
            }
            block = (block | 63) + 1
        }
        return to
    }
}
