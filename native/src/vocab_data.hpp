// The bytes of rvos_edge/assets/bpe_simple_vocab_16e6.txt.gz, built into the library.
#pragma once

#include <string_view>

namespace rvos_edge {

std::string_view vocab_gz();

}  // namespace rvos_edge
