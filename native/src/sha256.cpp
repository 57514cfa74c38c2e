// sha256 with OpenSSL's libcrypto (EVP interface).
#include <fstream>
#include <memory>
#include <vector>

#include <openssl/evp.h>

#include "rvos_edge/error.hpp"
#include "rvos_edge/manifest.hpp"

namespace rvos_edge {
namespace {

using Digest = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;

Digest new_digest() {
    Digest ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
        throw Error(ErrorKind::backend, "OpenSSL cannot compute sha256");
    return ctx;
}

std::string finish(EVP_MD_CTX* ctx) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    if (EVP_DigestFinal_ex(ctx, digest, &size) != 1) throw Error(ErrorKind::backend, "OpenSSL cannot compute sha256");
    static const char hex[] = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < size; ++i) {
        out.push_back(hex[digest[i] >> 4]);
        out.push_back(hex[digest[i] & 15]);
    }
    return out;
}

}  // namespace

std::string sha256_hex(const void* data, size_t size) {
    Digest ctx = new_digest();
    EVP_DigestUpdate(ctx.get(), data, size);
    return finish(ctx.get());
}

std::string sha256_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(ErrorKind::artifacts, "cannot read " + path.string());
    Digest ctx = new_digest();
    std::vector<char> buffer(1 << 20);
    while (in) {
        in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
        EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<size_t>(in.gcount()));
    }
    if (in.bad()) throw Error(ErrorKind::artifacts, "cannot read " + path.string());
    return finish(ctx.get());
}

}  // namespace rvos_edge
