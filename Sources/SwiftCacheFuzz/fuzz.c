// SPDX-License-Identifier: BSD-3-Clause
// The fuzzer's program (make fuzz, fuzz/README.md). libFuzzer calls
// LLVMFuzzerTestOneInput with each input it tries; the case itself, and
// the checks, are Swift (SwiftCacheTesting, FuzzCase.swift).
//
// It is C so that, built for fuzzing (-sanitize=fuzzer and
// -DSWIFTCACHE_LIBFUZZER), libFuzzer's own main is the program's: SwiftPM
// renames the main of a Swift executable. Built plainly (swift build), it
// replays the inputs named on its command line.
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int swiftcache_fuzz_one(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return swiftcache_fuzz_one(data, size); }

#ifndef SWIFTCACHE_LIBFUZZER
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        FILE *file = fopen(argv[i], "rb");
        if (file == NULL) {
            perror(argv[i]);
            return 1;
        }
        uint8_t *data = NULL;
        size_t size = 0, room = 0, got;
        do {
            if (size == room) {
                room = room ? 2 * room : 4096;
                data = realloc(data, room);
                if (data == NULL) abort();
            }
            got = fread(data + size, 1, room - size, file);
            size += got;
        } while (got > 0);
        fclose(file);
        printf("%s: %zu bytes\n", argv[i], size);
        LLVMFuzzerTestOneInput(data, size);
        free(data);
    }
    return 0;
}
#endif
