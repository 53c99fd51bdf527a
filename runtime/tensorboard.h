// TensorBoard event files (`log.tensorboard`), written by rank 0 without TensorFlow.
//
// A file is a sequence of records, each: the payload's length (uint64, little endian), the
// masked CRC32C of those 8 bytes (uint32), the payload, the masked CRC32C of the payload
// (masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8). Each payload is a serialized
// tensorflow.Event protocol buffer: the first names the format ("brain.Event:2"), the others
// carry a Summary of scalars (simple_value) or text (a string tensor with the "text" plugin's
// metadata), at a step, with the wall time. The protobuf encoding is written here by hand
// (a few fields); tests/e2e/tensorboard_test.py decodes the files with protobuf's own library.
//
// The file is <dir>/events.out.tfevents.<unix seconds>.<host>.<pid>.ftune, the name TensorBoard
// looks for; records are flushed after each Add* so a crashed run keeps what it logged.
//
// Thread safety: none; one writer per file, on rank 0.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>

namespace ftune::runtime {

// CRC-32C (Castagnoli) of `data`, and its masked form as TensorFlow's record format stores it.
uint32_t Crc32c(std::string_view data);
uint32_t MaskedCrc32c(std::string_view data);

class TensorBoardWriter {
 public:
  // Creates `dir` and the event file in it. Throws IoError naming the file when it cannot.
  explicit TensorBoardWriter(const std::string& dir);
  void AddScalar(const std::string& tag, double value, int64_t step);
  // Markdown text, shown by TensorBoard's text dashboard.
  void AddText(const std::string& tag, const std::string& text, int64_t step);
  const std::string& path() const { return path_; }

 private:
  void WriteEvent(const std::string& event);
  std::string path_;
  std::ofstream out_;
};

// This process's writer for the event directory `dir` (created on first use; the training loop
// and the evaluator write into the same file).
TensorBoardWriter& RunTensorBoard(const std::string& dir);

}  // namespace ftune::runtime
