#include "data/sha256.h"

#include <openssl/evp.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "parallel/error.h"

namespace ftune::data {

struct Sha256::Ctx {
  EVP_MD_CTX* md;
};

Sha256::Sha256()
    : ctx_(new Ctx{EVP_MD_CTX_new()}, [](Ctx* c) {
        EVP_MD_CTX_free(c->md);
        delete c;
      }) {
  if (ctx_->md == nullptr || EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) != 1) {
    FT_THROW(InternalError, "OpenSSL could not start a sha256 digest");
  }
}

void Sha256::Update(const void* data, size_t n) {
  if (EVP_DigestUpdate(ctx_->md, data, n) != 1) FT_THROW(InternalError, "OpenSSL sha256 update failed");
}

std::array<uint8_t, 32> Sha256::Digest() {
  std::array<uint8_t, 32> out{};
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx_->md, out.data(), &len) != 1 || len != out.size()) {
    FT_THROW(InternalError, "OpenSSL sha256 final failed");
  }
  return out;
}

std::string Sha256::Hex() {
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (uint8_t b : Digest()) {
    s += kHex[b >> 4];
    s += kHex[b & 15];
  }
  return s;
}

std::string Sha256Hex(std::string_view s) {
  Sha256 h;
  h.Update(s);
  return h.Hex();
}

std::string Sha256File(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) FT_THROW(IoError, "cannot open {}: {}", path, std::strerror(errno));
  Sha256 h;
  std::vector<char> buf(1 << 20);
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) h.Update(buf.data(), n);
  if (std::ferror(f.get())) FT_THROW(IoError, "cannot read {}: {}", path, std::strerror(errno));
  return h.Hex();
}

}  // namespace ftune::data
