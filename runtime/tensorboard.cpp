#include "runtime/tensorboard.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>

#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune::runtime {
namespace {

// The reflected Castagnoli polynomial's table.
const std::array<uint32_t, 256>& CrcTable() {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}

// Protocol buffer wire format: varint keys and values, length-delimited fields, fixed32/64.
void Varint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}
void Key(int field, int wire_type, std::string* out) {
  Varint((uint64_t(field) << 3) | uint64_t(wire_type), out);
}
void Bytes(int field, std::string_view data, std::string* out) {
  Key(field, 2, out);
  Varint(data.size(), out);
  out->append(data);
}
void Fixed64(int field, uint64_t bits, std::string* out) {
  Key(field, 1, out);
  for (int k = 0; k < 8; ++k) out->push_back(static_cast<char>((bits >> (8 * k)) & 0xff));
}
void Fixed32(int field, uint32_t bits, std::string* out) {
  Key(field, 5, out);
  for (int k = 0; k < 4; ++k) out->push_back(static_cast<char>((bits >> (8 * k)) & 0xff));
}

// tensorflow.Event {double wall_time = 1; int64 step = 2; string file_version = 3;
//                   Summary summary = 5;}
std::string Event(int64_t step, const std::string* file_version, const std::string* summary) {
  const double wall = std::chrono::duration<double>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  uint64_t bits;
  std::memcpy(&bits, &wall, 8);
  std::string e;
  Fixed64(1, bits, &e);
  Key(2, 0, &e);
  Varint(static_cast<uint64_t>(step), &e);
  if (file_version) Bytes(3, *file_version, &e);
  if (summary) Bytes(5, *summary, &e);
  return e;
}

}  // namespace

uint32_t Crc32c(std::string_view data) {
  uint32_t c = 0xffffffffu;
  for (unsigned char b : data) c = CrcTable()[(c ^ b) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

uint32_t MaskedCrc32c(std::string_view data) {
  const uint32_t c = Crc32c(data);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  files::CreateDirectories(dir);
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  path_ = files::Join(dir, fmt::format("events.out.tfevents.{}.{}.{}.ftune", now, host, getpid()));
  out_.open(path_, std::ios::binary | std::ios::app);
  if (!out_) FT_THROW(IoError, "cannot create the TensorBoard event file {}", path_);
  const std::string version = "brain.Event:2";
  WriteEvent(Event(0, &version, nullptr));
}

void TensorBoardWriter::WriteEvent(const std::string& event) {
  std::string len(8, '\0');
  for (int k = 0; k < 8; ++k) len[k] = static_cast<char>((uint64_t(event.size()) >> (8 * k)) & 0xff);
  auto u32 = [](uint32_t v) {
    std::string s(4, '\0');
    for (int k = 0; k < 4; ++k) s[k] = static_cast<char>((v >> (8 * k)) & 0xff);
    return s;
  };
  out_ << len << u32(MaskedCrc32c(len)) << event << u32(MaskedCrc32c(event));
  out_.flush();
  if (!out_) FT_THROW(IoError, "cannot write the TensorBoard event file {}", path_);
}

void TensorBoardWriter::AddScalar(const std::string& tag, double value, int64_t step) {
  // Summary {repeated Value value = 1}; Value {string tag = 1; float simple_value = 2;}
  std::string v;
  Bytes(1, tag, &v);
  const float f = static_cast<float>(value);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  Fixed32(2, bits, &v);
  std::string summary;
  Bytes(1, v, &summary);
  WriteEvent(Event(step, nullptr, &summary));
}

void TensorBoardWriter::AddText(const std::string& tag, const std::string& text, int64_t step) {
  // Value {tag = 1; SummaryMetadata metadata = 9 {PluginData plugin_data = 1 {plugin_name = 1}};
  //        TensorProto tensor = 8 {DataType dtype = 1 (DT_STRING = 7);
  //                                TensorShapeProto tensor_shape = 2 (scalar: empty);
  //                                repeated bytes string_val = 8;}}
  std::string plugin, metadata, tensor, v, summary;
  Bytes(1, "text", &plugin);
  Bytes(1, plugin, &metadata);
  Key(1, 0, &tensor);
  Varint(7, &tensor);
  Bytes(2, "", &tensor);
  Bytes(8, text, &tensor);
  Bytes(1, tag, &v);
  Bytes(8, tensor, &v);
  Bytes(9, metadata, &v);
  Bytes(1, v, &summary);
  WriteEvent(Event(step, nullptr, &summary));
}

TensorBoardWriter& RunTensorBoard(const std::string& dir) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<TensorBoardWriter>> writers;
  std::lock_guard<std::mutex> lock(mu);
  auto& w = writers[dir];
  if (!w) w = std::make_unique<TensorBoardWriter>(dir);
  return *w;
}

}  // namespace ftune::runtime
