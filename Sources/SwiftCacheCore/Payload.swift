import SystemPackage

/// The bytes of a write request: the client's data, or zeroes (NBD_CMD_WRITE_ZEROES).
enum Payload {
    case data(UnsafeRawBufferPointer)
    case zeroes(count: UInt64)

    var count: UInt64 {
        switch self {
        case .data(let bytes): UInt64(bytes.count)
        case .zeroes(let count): count
        }
    }

    /// Bytes `range` of the payload (relative to its start) to the cache file at `offset`.
    func store(_ range: Range<UInt64>, in file: CacheFile, at offset: UInt64) throws(CacheError) {
        guard !range.isEmpty else { return }
        switch self {
        case .data(let bytes):
            try file.write(UnsafeRawBufferPointer(rebasing: bytes[Int(range.lowerBound)..<Int(range.upperBound)]), at: offset)
        case .zeroes:
            try file.zero(at: offset, length: UInt64(range.count))
        }
    }

    /// The whole payload to the plugin at `offset`, in requests it accepts.
    func send(to backend: some Backend, at offset: UInt64, fua: Bool) throws(Errno) {
        switch self {
        case .data(let bytes):
            try writeInPieces(bytes, to: backend, at: offset, fua: fua)
        case .zeroes(let count) where backend.canZero:
            try backend.zero(count: count, at: offset, fua: fua)
        case .zeroes(let count):
            // One buffer of zeroes, sent as many times as it takes.
            let zeroes = try Buffer(count: Int(min(count, backend.transferLimit)))
            zeroes.bytes.initializeMemory(as: UInt8.self, repeating: 0)
            var done: UInt64 = 0
            while done < count {
                let n = Int(min(count - done, UInt64(zeroes.bytes.count)))
                try backend.write(UnsafeRawBufferPointer(rebasing: zeroes.bytes[..<n]), at: offset + done, fua: fua)
                done += UInt64(n)
            }
        }
    }
}

/// A plugin write of any length, in requests the plugin accepts.
func writeInPieces(_ bytes: UnsafeRawBufferPointer, to backend: some Backend, at offset: UInt64, fua: Bool) throws(Errno) {
    var done = 0
    while done < bytes.count {
        let n = min(bytes.count - done, Int(backend.transferLimit))
        try backend.write(UnsafeRawBufferPointer(rebasing: bytes[done..<done + n]), at: offset + UInt64(done), fua: fua)
        done += n
    }
}
