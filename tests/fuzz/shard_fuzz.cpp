// Harness of data/shards' ShardReader: the datasets and attributes of a token shard. The input
// is not an HDF5 file (fuzzing libhdf5's own file-format parser would find libhdf5's bugs, not
// ftune's): it describes a shard that HDF5 then writes, choosing for each dataset and attribute
// ShardReader looks at whether it exists and its type, rank, length and values: what a shard
// written by another version, another tool or a damaged prepare can hold. An accepted shard is
// read document by document and whole.
#include <hdf5.h>

#include <cstring>
#include <mutex>

#include "data/shards.h"
#include "tests/fuzz/fuzz_target.h"

namespace {

// Consumes the input front to back; zeros once it is used up.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  uint8_t U8() { return n_ > 0 ? (--n_, *p_++) : 0; }
  uint64_t U64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t(U8()) << (8 * i);
    return v;
  }
  std::string Str(size_t n) {
    std::string s;
    for (size_t i = 0; i < n; ++i) s.push_back(char(U8()));
    return s;
  }

 private:
  const uint8_t* p_;
  size_t n_;
};

struct Dataset {
  const char* name;
  hid_t type;  // the type ftune writes
};

// hid_t closers that ignore failures (the description may make a call fail on purpose).
struct Closer {
  hid_t id;
  herr_t (*close)(hid_t);
  ~Closer() {
    if (id >= 0) close(id);
  }
};

// One 1-D (or, for `two_d`, N x 2) dataset of `n` values of `type` holding `values`.
void WriteDataset(hid_t file, const char* name, hid_t type, hsize_t n, bool two_d, bool chunked,
                  const std::vector<int64_t>& values) {
  const hsize_t dims[2] = {n, 2};
  Closer space{H5Screate_simple(two_d ? 2 : 1, dims, nullptr), H5Sclose};
  Closer dcpl{H5Pcreate(H5P_DATASET_CREATE), H5Pclose};
  if (chunked && n > 0) {
    const hsize_t chunk[2] = {std::min<hsize_t>(n, 7), 2};
    H5Pset_chunk(dcpl.id, two_d ? 2 : 1, chunk);
  }
  Closer ds{H5Dcreate2(file, name, type, space.id, H5P_DEFAULT, dcpl.id, H5P_DEFAULT), H5Dclose};
  if (ds.id < 0 || H5Tget_class(type) == H5T_STRING) return;
  std::vector<int64_t> buf(n * (two_d ? 2 : 1));
  for (size_t i = 0; i < buf.size() && i < values.size(); ++i) buf[i] = values[i];
  H5Dwrite(ds.id, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data());
}

// Writes a dataset as the input describes it; returns its length (-1 when absent or not 1-D).
int64_t DescribeDataset(Bytes& in, hid_t file, const Dataset& d, int64_t n_tokens) {
  const uint8_t how = in.U8();
  const hsize_t n = in.U8();
  const bool chunked = (how & 0x80) != 0;
  std::vector<int64_t> values;
  if (std::strcmp(d.name, "doc_offsets") == 0 && (how & 0x40) != 0) {
    // Well-formed offsets from 0 to n_tokens by the input's steps (the common, valid case).
    int64_t at = 0;
    values.push_back(0);
    for (hsize_t i = 1; i + 1 < n; ++i) values.push_back(at += in.U8() % 8);
    values.push_back(std::max<int64_t>(n_tokens, at));
  } else {
    for (hsize_t i = 0; i < n; ++i) values.push_back(int64_t(in.U64()));
  }
  switch (how & 0x7) {
    case 0:
      return -1;  // absent
    case 1:
      WriteDataset(file, d.name, d.type, n, false, chunked, values);
      return int64_t(n);
    case 2: {  // an integer of another size
      const hid_t others[] = {H5T_STD_I8LE, H5T_STD_I16LE, H5T_STD_I32LE, H5T_STD_I64LE};
      WriteDataset(file, d.name, others[in.U8() % 4], n, false, chunked, values);
      return int64_t(n);
    }
    case 3:
      WriteDataset(file, d.name, H5T_IEEE_F64LE, n, false, chunked, values);
      return -1;
    case 4: {
      Closer str{H5Tcopy(H5T_C_S1), H5Tclose};
      H5Tset_size(str.id, H5Tget_size(d.type));
      WriteDataset(file, d.name, str.id, n, false, chunked, values);
      return -1;
    }
    case 5:
      WriteDataset(file, d.name, d.type, n, true, chunked, values);
      return -1;
    case 6: {  // same size, big-endian or unsigned
      Closer t{H5Tcopy(d.type), H5Tclose};
      if (in.U8() % 2) {
        H5Tset_order(t.id, H5T_ORDER_BE);
      } else {
        H5Tset_sign(t.id, H5T_SGN_NONE);
      }
      WriteDataset(file, d.name, t.id, n, false, chunked, values);
      return int64_t(n);
    }
    default: {  // a group where the dataset should be
      Closer g{H5Gcreate2(file, d.name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose};
      return -1;
    }
  }
}

// Writes attribute `name` as the input describes it. `right` is the value a valid shard has.
void DescribeAttribute(Bytes& in, hid_t file, const char* name, bool is_string, int64_t right) {
  const uint8_t how = in.U8() % 9;
  if (how == 0) return;  // absent
  const size_t count = 1 + in.U8() % 3;
  const hsize_t dims[1] = {count};
  const bool scalar = how != 5 && how != 7;
  Closer space{scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, nullptr), H5Sclose};
  std::vector<int64_t> ints(count);
  for (auto& v : ints) v = how == 1 ? right : int64_t(in.U64());
  switch (how) {
    case 1:
      if (is_string) break;  // a fixed string, below
      [[fallthrough]];
    case 2:
    case 5: {
      Closer a{H5Acreate2(file, name, H5T_STD_I64LE, space.id, H5P_DEFAULT, H5P_DEFAULT),
               H5Aclose};
      H5Awrite(a.id, H5T_NATIVE_INT64, ints.data());
      return;
    }
    case 3: {
      Closer a{H5Acreate2(file, name, H5T_STD_I32BE, space.id, H5P_DEFAULT, H5P_DEFAULT),
               H5Aclose};
      H5Awrite(a.id, H5T_NATIVE_INT64, ints.data());
      return;
    }
    case 4: {
      const double v = double(int64_t(in.U64())) / 7;
      Closer a{H5Acreate2(file, name, H5T_IEEE_F64LE, space.id, H5P_DEFAULT, H5P_DEFAULT),
               H5Aclose};
      H5Awrite(a.id, H5T_NATIVE_DOUBLE, &v);
      return;
    }
    case 8: {  // a variable-length string
      Closer t{H5Tcopy(H5T_C_S1), H5Tclose};
      H5Tset_size(t.id, H5T_VARIABLE);
      const std::string s = in.Str(in.U8() % 16);
      const char* p = s.c_str();
      Closer a{H5Acreate2(file, name, t.id, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose};
      H5Awrite(a.id, t.id, &p);
      return;
    }
    default:
      break;
  }
  // A fixed-length string: one (how 1, 6) or `count` of them (how 7).
  const size_t len = 1 + in.U8() % 80;
  const std::string s = in.Str(len * count);
  Closer t{H5Tcopy(H5T_C_S1), H5Tclose};
  H5Tset_size(t.id, len);
  H5Tset_strpad(t.id, in.U8() % 2 ? H5T_STR_NULLPAD : H5T_STR_NULLTERM);
  Closer a{H5Acreate2(file, name, t.id, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose};
  H5Awrite(a.id, t.id, s.data());
}

void WriteDescribedShard(const std::string& path, Bytes& in) {
  std::lock_guard<std::mutex> lock(ftune::data::Hdf5Mutex());
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  Closer file{H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose};
  FTUNE_FUZZ_CHECK(file.id >= 0);
  const Dataset datasets[] = {
      {"tokens", H5T_STD_I32LE}, {"loss_mask", H5T_STD_U8LE}, {"doc_offsets", H5T_STD_I64LE}};
  int64_t n_tokens = 0;
  for (const Dataset& d : datasets) {
    const int64_t n = DescribeDataset(in, file.id, d, n_tokens);
    if (std::strcmp(d.name, "tokens") == 0) n_tokens = std::max<int64_t>(n, 0);
  }
  DescribeAttribute(in, file.id, "format_version", false, ftune::data::kShardFormatVersion);
  DescribeAttribute(in, file.id, "tokenizer_sha256", true, 0);
  DescribeAttribute(in, file.id, "split", true, 0);
  DescribeAttribute(in, file.id, "vocab_size", false, 1000);
  DescribeAttribute(in, file.id, "pad_id", false, -1);
  DescribeAttribute(in, file.id, "eos_id", false, 2);
  DescribeAttribute(in, file.id, "num_tokens", false, n_tokens);
  H5Eclear2(H5E_DEFAULT);
}

}  // namespace

// Input: a description of one shard (see DescribeDataset and DescribeAttribute).
FTUNE_FUZZ_TARGET(shard) {
  using ftune::data::ShardReader;
  const std::string path = ftune::fuzz::WriteScratch("shard.h5", "");
  Bytes in(data, size);
  WriteDescribedShard(path, in);
  ftune::fuzz::ExpectInputErrors([&] {
    ShardReader r(path);
    const auto& off = r.doc_offsets();
    FTUNE_FUZZ_CHECK(off.size() >= 2 && off.front() == 0 && off.back() == r.num_tokens());
    std::vector<int32_t> tokens(r.num_tokens());
    std::vector<uint8_t> mask(r.num_tokens());
    for (size_t d = 0; d + 1 < off.size(); ++d) {
      r.Read(off[d], off[d + 1] - off[d], tokens.data() + off[d], mask.data() + off[d]);
    }
    std::vector<int32_t> all_tokens;
    std::vector<uint8_t> all_mask;
    r.ReadAll(&all_tokens, &all_mask);
    FTUNE_FUZZ_CHECK(all_tokens == tokens && all_mask == mask);
  });
  return 0;
}
