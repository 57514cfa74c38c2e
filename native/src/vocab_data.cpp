// The vocabulary file is assembled into .rodata with .incbin (RVOS_EDGE_VOCAB_FILE is its path,
// set by CMake), so the library needs no data file at run time.
#include "vocab_data.hpp"

__asm__(".section .rodata\n"
        ".balign 16\n"
        ".local rvos_edge_vocab_gz_begin\n"
        "rvos_edge_vocab_gz_begin:\n"
        ".incbin \"" RVOS_EDGE_VOCAB_FILE "\"\n"
        ".local rvos_edge_vocab_gz_end\n"
        "rvos_edge_vocab_gz_end:\n"
        ".previous\n");

extern "C" const char rvos_edge_vocab_gz_begin[];
extern "C" const char rvos_edge_vocab_gz_end[];

namespace rvos_edge {

std::string_view vocab_gz() {
    return {rvos_edge_vocab_gz_begin, static_cast<size_t>(rvos_edge_vocab_gz_end - rvos_edge_vocab_gz_begin)};
}

}  // namespace rvos_edge
