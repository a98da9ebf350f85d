// SPDX-License-Identifier: BSD-3-Clause
import SystemPackage
import XCTest

@testable import SwiftCacheCore

/// The cache file on its own, on a disk file system and on tmpfs (where large
/// reads copy the pages it holds from a mapping): reads return data and
/// holes byte for byte, and reading a hole allocates nothing (touching it
/// through the mapping would, and on a full tmpfs that is SIGBUS).
final class CacheFileTests: XCTestCase {
    private func eachFileSystem(_ body: (CacheFile, String) throws -> Void) throws {
        let parents = ["/tmp"] + (access("/dev/shm", W_OK) == 0 ? ["/dev/shm"] : [])
        for parent in parents {
            let directory = try makeTemporaryDirectory(in: parent)
            defer { removeDirectory(directory) }
            try body(try CacheFile(directory: FilePath(directory)), parent)
        }
    }

    func testReadsMixingDataAndHolesReturnEveryByte() throws {
        try eachFileSystem { file, parent in
            let size = 4 * MiB
            try file.resize(to: size)
            var model = [UInt8](repeating: 0, count: Int(size))
            // Data runs of odd lengths and places, holes between them.
            for (n, (offset, length)) in [
                (0, 5000), (200_000, 65536), (300_000, 1), (1_048_576, 400_000),
                (3 * 1_048_576 + 7, 1_048_569),
            ].enumerated() {
                let data = randomBytes(length, seed: 500 + UInt64(n))
                try data.withUnsafeBytes { try file.write($0, at: UInt64(offset)) }
                model.replaceSubrange(offset..<offset + length, with: data)
            }
            var rng = SplitMix64(seed: 501)
            for _ in 0..<100 {
                let count = Int(rng.next() % (512 << 10)) + 1
                let offset = Int(rng.next() % (size - UInt64(count) + 1))
                var out = [UInt8](repeating: 0xA5, count: count)
                try out.withUnsafeMutableBytes { try file.read(into: $0, at: UInt64(offset)) }
                XCTAssertTrue(out[...] == model[offset..<offset + count], "\(parent): \(count) bytes at \(offset)")
            }
        }
    }

    func testReadingHolesAllocatesNothing() throws {
        try eachFileSystem { file, parent in
            try file.resize(to: 4 * MiB)
            let data = randomBytes(65536, seed: 502)
            try data.withUnsafeBytes { try file.write($0, at: MiB) }
            let before = file.allocatedBytes()
            var out = [UInt8](repeating: 0xA5, count: Int(MiB) + 65536)
            try out.withUnsafeMutableBytes { try file.read(into: $0, at: 0) }
            XCTAssertTrue(out[..<Int(MiB)].allSatisfy { $0 == 0 }, parent)
            XCTAssertEqual(Array(out[Int(MiB)...]), data, parent)
            out = [UInt8](repeating: 0xA5, count: Int(MiB))
            try out.withUnsafeMutableBytes { try file.read(into: $0, at: 2 * MiB) }
            XCTAssertTrue(out.allSatisfy { $0 == 0 }, parent)
            for offset in stride(from: 3 * MiB + 100, to: 4 * MiB - 4096, by: 8192) {
                out = [UInt8](repeating: 0xA5, count: 4096)
                try out.withUnsafeMutableBytes { try file.read(into: $0, at: offset) }
                XCTAssertTrue(out.allSatisfy { $0 == 0 }, "\(parent): 4 KiB at \(offset)")
            }
            XCTAssertEqual(file.allocatedBytes(), before, "\(parent): reading holes allocated pages")
        }
    }

    /// On tmpfs large reads go through mappings of 64 MiB windows: a read
    /// across a window edge returns both sides, and a 1 TiB cache file costs
    /// the address space of the windows read, not a terabyte.
    func testReadsAcrossMappedWindowsAndAddressSpaceOfAHugeFile() throws {
        try eachFileSystem { file, parent in
            let window: UInt64 = 64 << 20
            try file.resize(to: 1 << 40)
            let sizeBefore = virtualMemoryKiB()
            for edge in [window, 7 * window, (1 << 40) - window] {
                let data = randomBytes(300_000, seed: edge)
                try data.withUnsafeBytes { try file.write($0, at: edge - 150_000) }
                for (offset, count) in [
                    (edge - 2500, 5000), (edge - 150_000, 300_000), (edge - 65536, 131_072),
                    (edge - 1, 2),
                ] {
                    var out = [UInt8](repeating: 0xA5, count: count)
                    try out.withUnsafeMutableBytes { try file.read(into: $0, at: offset) }
                    let from = Int(offset - (edge - 150_000))
                    XCTAssertEqual(out, Array(data[from..<from + count]), "\(parent): \(count) bytes at \(offset)")
                }
            }
            let growthKiB = virtualMemoryKiB() - sizeBefore
            XCTAssertLessThan(
                growthKiB, 1 << 20,
                "\(parent): reading a 1 TiB cache file grew VmSize by \(growthKiB) KiB")
        }
    }
}

/// This process's VmSize in KiB.
private func virtualMemoryKiB() -> Int {
    guard let status = fopen("/proc/self/status", "r") else { return 0 }
    defer { fclose(status) }
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, Int32(line.count), status) != nil {
        let text = String(cString: line)
        if text.hasPrefix("VmSize:") {
            return Int(text.dropFirst(7).filter { $0.isNumber }) ?? 0
        }
    }
    return 0
}
