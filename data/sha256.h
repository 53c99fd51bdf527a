// SHA-256 (OpenSSL EVP), for the source-file and content fingerprints written
// into prepared datasets. Streaming: Update() any number of times, then Hex().
#pragma once

#include <array>
#include <memory>
#include <cstdint>
#include <string>
#include <string_view>

namespace ftune::data {

class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t n);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  std::array<uint8_t, 32> Digest();  // finishes the hash; the object is spent afterwards
  std::string Hex();                 // lower-case hex of Digest()

 private:
  struct Ctx;  // OpenSSL's EVP digest context
  std::unique_ptr<Ctx, void (*)(Ctx*)> ctx_;
};

std::string Sha256Hex(std::string_view s);
// Hex sha256 of a file's bytes, read in 1 MiB pieces. Throws IoError naming the file.
std::string Sha256File(const std::string& path);

}  // namespace ftune::data
