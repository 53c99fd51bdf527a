#include "data/loader.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <list>
#include <mutex>
#include <numeric>
#include <thread>

#include "data/shards.h"
#include "parallel/context_parallel.h"
#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune::data {

namespace {

uint64_t SplitMix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A permutation of [0, n) from (seed, salt): Fisher-Yates over SplitMix64, so it is the same
// on every platform and libtorch version.
std::vector<int64_t> Permutation(int64_t n, int64_t seed, int64_t salt, bool shuffle) {
  std::vector<int64_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  if (!shuffle) return p;
  uint64_t s = uint64_t(seed) * 0x100000001B3ull ^ (uint64_t(salt) + 0x51ED27ull);
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = int64_t(SplitMix(s) % uint64_t(i + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

constexpr size_t kOpenShards = 8;  // shard files kept open by the prefetch thread

}  // namespace

struct Loader::Impl {
  LoaderOptions opts;
  std::vector<std::string> shard_paths;
  std::vector<int64_t> shard_bytes;
  int64_t vocab_size = 0;
  int32_t pad_id = 0;
  // Documents of the split in manifest order.
  std::vector<int32_t> doc_shard;
  std::vector<int64_t> doc_start;  // in its shard
  std::vector<int32_t> doc_len;
  int64_t total_tokens = 0;
  // Packing: documents in packing order and the stream offset of each.
  int64_t index_seed = 0;
  std::vector<int64_t> pack_docs, pack_offsets;
  int64_t num_samples = 0;

  // Consumer side.
  LoaderState state;
  double wait_s = 0;

  // Prefetch thread and its queue.
  struct Item {
    Batch batch;
    LoaderState after;
  };
  std::thread worker;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Item> queue;
  std::exception_ptr error;
  bool stop = false;

  // Prefetch-thread-only: open shards (LRU) and the current epoch's permutation.
  std::list<std::pair<int32_t, std::unique_ptr<ShardReader>>> open;
  int64_t perm_epoch = -1, perm_seed = 0;
  std::vector<int64_t> perm;

  int64_t GlobalBatch() const { return opts.micro_batch * opts.dp_size; }
  int64_t Used() const {
    const int64_t g = GlobalBatch();
    return opts.drop_last ? num_samples / g * g : (num_samples + g - 1) / g * g;
  }

  void BuildIndex(int64_t seed) {
    index_seed = seed;
    if (!opts.packing) {
      num_samples = int64_t(doc_len.size());
      return;
    }
    // Documents are packed in stored order, so a row is one contiguous token range (one or
    // two hyperslab reads); rows themselves are shuffled per epoch.
    pack_docs = Permutation(int64_t(doc_len.size()), seed, 0, /*shuffle=*/false);
    pack_offsets.assign(pack_docs.size() + 1, 0);
    for (size_t j = 0; j < pack_docs.size(); ++j) {
      pack_offsets[j + 1] = pack_offsets[j] + doc_len[pack_docs[j]];
    }
    const int64_t row = opts.seq_len + 1;
    num_samples = (total_tokens + row - 1) / row;
  }

  ShardReader& Shard(int32_t s) {
    for (auto it = open.begin(); it != open.end(); ++it) {
      if (it->first == s) {
        open.splice(open.begin(), open, it);
        return *open.front().second;
      }
    }
    if (open.size() >= kOpenShards) open.pop_back();
    open.emplace_front(s, std::make_unique<ShardReader>(shard_paths[s]));
    return *open.front().second;
  }

  void ReadDoc(int64_t doc, int64_t offset, int64_t count, int32_t* tok, uint8_t* mask) {
    ShardReader& r = Shard(doc_shard[doc]);
    r.Read(doc_start[doc] + offset, count, tok, mask);
    for (int64_t i = 0; i < count; ++i) {
      if (tok[i] < 0 || tok[i] >= vocab_size) {
        FT_THROW(DataError, "{}: token id {} at {} is outside the vocabulary [0, {}) (corrupt "
                 "shard)", r.path(), tok[i], doc_start[doc] + offset + i, vocab_size);
      }
    }
  }

  // Fills row b of the batch tensors with sample `s` (-1: an empty filler row).
  void FillRow(int64_t s, int64_t b, Batch& out, std::vector<int32_t>& tok,
               std::vector<uint8_t>& mask, std::vector<int64_t>& seg) {
    const int64_t T = out.tokens.size(1), R = T + 1;  // the batch's width, <= seq_len
    tok.assign(R, pad_id);
    mask.assign(R, 0);
    seg.assign(R, 0);
    int64_t filled = 0;
    if (s >= 0 && !opts.packing) {
      filled = std::min<int64_t>(doc_len[s], R);
      ReadDoc(s, 0, filled, tok.data(), mask.data());
    } else if (s >= 0) {
      const int64_t begin = s * R, end = std::min(begin + R, total_tokens);
      int64_t j = std::upper_bound(pack_offsets.begin(), pack_offsets.end(), begin) -
                  pack_offsets.begin() - 1;
      int64_t piece = 0;
      // Reads are merged across documents stored back to back in the same shard.
      int64_t span_doc = -1, span_off = 0, span_n = 0, span_at = 0;
      auto flush = [&] {
        if (span_n > 0) ReadDoc(span_doc, span_off, span_n, tok.data() + span_at, mask.data() + span_at);
        span_n = 0;
      };
      for (int64_t pos = begin; pos < end; ++j, ++piece) {
        const int64_t doc = pack_docs[j];
        const int64_t off = pos - pack_offsets[j];
        const int64_t n = std::min(pack_offsets[j + 1], end) - pos;
        const bool contiguous = span_n > 0 && doc_shard[doc] == doc_shard[span_doc] &&
                                doc_start[doc] + off == doc_start[span_doc] + span_off + span_n;
        if (contiguous) {
          span_n += n;
        } else {
          flush();
          span_doc = doc;
          span_off = off;
          span_n = n;
          span_at = filled;
        }
        std::fill(seg.begin() + filled, seg.begin() + filled + n, piece);
        filled += n;
        pos += n;
      }
      flush();
      std::fill(seg.begin() + filled, seg.end(), piece);  // padding: a segment of its own
    }
    auto* t = out.tokens[b].data_ptr<int64_t>();
    auto* y = out.targets[b].data_ptr<int64_t>();
    auto* m = out.loss_mask[b].data_ptr<float>();
    auto* p = out.positions[b].data_ptr<int64_t>();
    int64_t* sg = opts.packing ? out.segment_ids[b].data_ptr<int64_t>() : nullptr;
    int64_t position = 0;
    for (int64_t i = 0; i < T; ++i) {
      t[i] = tok[i];
      y[i] = tok[i + 1];
      const bool same = seg[i + 1] == seg[i];
      m[i] = (i + 1 < filled && mask[i + 1] && same) ? 1.0f : 0.0f;
      if (sg) {
        if (i > 0 && seg[i] != seg[i - 1]) position = 0;
        sg[i] = seg[i];
      }
      p[i] = position++;
    }
    out.sample_ids.data_ptr<int64_t>()[b] = s;
  }

  // The width of an unpacked batch of samples `ids` (-1: filler): its longest row, rounded up to
  // pad_to_multiple (and to 2 * cp_size: context parallelism cuts rows into 2 * cp chunks), at
  // most seq_len; at least one column (a batch of filler rows only). Every cut column is padding
  // of every row (loss mask 0), so the loss is that of the full width.
  int64_t Width(const std::vector<int64_t>& ids) const {
    if (opts.packing) return opts.seq_len;  // packed rows are full
    int64_t longest = 1;
    for (int64_t s : ids) {
      if (s >= 0) longest = std::max(longest, std::min<int64_t>(doc_len[s], opts.seq_len));
    }
    const int64_t cp_chunks = opts.cp_size > 1 ? 2 * int64_t(opts.cp_size) : 1;
    const int64_t m = std::lcm(opts.pad_to_multiple, cp_chunks);
    return std::min(opts.seq_len, (longest + m - 1) / m * m);
  }

  // Context parallelism: this cp rank's two chunks of every row (parallel/context_parallel.h),
  // with the target count of its own tokens.
  void ShardForContext(Batch& b) const {
    if (opts.cp_size == 1) return;
    for (torch::Tensor* t : {&b.tokens, &b.targets, &b.loss_mask, &b.positions, &b.segment_ids}) {
      *t = parallel::ShardSequence(*t, opts.cp_size, opts.cp_rank, /*dim=*/1);
    }
    b.num_targets = static_cast<int64_t>(b.loss_mask.sum().item<float>());
  }

  // The batch at `st` (advancing to the next epoch when the current one is used up).
  Item Produce(LoaderState st) {
    const int64_t G = GlobalBatch(), B = opts.micro_batch;
    if (st.cursor + G > Used()) {
      ++st.epoch;
      st.cursor = 0;
    }
    if (perm_epoch != st.epoch || perm_seed != st.seed) {
      perm = Permutation(num_samples, st.seed, st.epoch, opts.shuffle);
      perm_epoch = st.epoch;
      perm_seed = st.seed;
    }
    std::vector<int64_t> ids(B);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t g = st.cursor + int64_t(opts.dp_rank) * B + b;
      ids[b] = g < num_samples ? perm[g] : -1;
    }
    const int64_t T = Width(ids);
    Item item;
    Batch& out = item.batch;
    out.tokens = torch::empty({B, T}, torch::kLong);
    out.targets = torch::empty({B, T}, torch::kLong);
    out.loss_mask = torch::empty({B, T}, torch::kFloat);
    out.positions = torch::empty({B, T}, torch::kLong);
    if (opts.packing) out.segment_ids = torch::empty({B, T}, torch::kLong);
    out.sample_ids = torch::empty({B}, torch::kLong);
    std::vector<int32_t> tok;
    std::vector<uint8_t> mask;
    std::vector<int64_t> seg;
    for (int64_t b = 0; b < B; ++b) FillRow(ids[b], b, out, tok, mask, seg);
    out.num_targets = static_cast<int64_t>(out.loss_mask.sum().item<float>());
    st.cursor += G;
    item.after = st;
    return item;
  }

  void Run(LoaderState st) {
    try {
      while (true) {
        {
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return stop || int64_t(queue.size()) < opts.prefetch; });
          if (stop) return;
        }
        Item item = Produce(st);
        ShardForContext(item.batch);
        st = item.after;
        std::lock_guard<std::mutex> lock(mu);
        queue.push_back(std::move(item));
        cv.notify_all();
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      error = std::current_exception();
      cv.notify_all();
    }
  }

  void Start() {
    stop = false;
    worker = std::thread([this, st = state] { Run(st); });
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
      cv.notify_all();
    }
    if (worker.joinable()) worker.join();
    queue.clear();
    error = nullptr;
    open.clear();
  }
};

Loader::Loader(const LoaderOptions& o) : impl_(std::make_unique<Impl>()) {
  Impl& im = *impl_;
  im.opts = o;
  if (o.seq_len < 1 || o.micro_batch < 1 || o.dp_size < 1 || o.dp_rank < 0 ||
      o.dp_rank >= o.dp_size || o.prefetch < 1 || o.pad_to_multiple < 1) {
    FT_THROW(ConfigError, "loader: bad options (seq_len {}, micro_batch {}, dp rank {} of {}, "
             "prefetch {}, pad_to_multiple {})", o.seq_len, o.micro_batch, o.dp_rank, o.dp_size,
             o.prefetch, o.pad_to_multiple);
  }
  const Manifest m = ReadManifest(o.dir);
  if (!o.expected_tokenizer_sha256.empty() &&
      m.meta.tokenizer_sha256 != o.expected_tokenizer_sha256) {
    FT_THROW(DataError,
             "{} was prepared with a different tokenizer (sha256 {}) than the model's (sha256 "
             "{}): re-run ftune prepare with this model's tokenizer",
             o.dir, m.meta.tokenizer_sha256, o.expected_tokenizer_sha256);
  }
  const SplitEntry& split = m.split(o.split);
  if (split.shards.empty()) {
    FT_THROW(DataError, "{}: the {} split is empty (see prepare_summary.json)", o.dir, o.split);
  }
  im.vocab_size = m.meta.vocab_size;
  im.pad_id = int32_t(m.meta.pad_id >= 0                ? m.meta.pad_id
                      : !m.meta.eos_ids.empty() && m.meta.eos_ids[0] >= 0 ? m.meta.eos_ids[0]
                                                                          : 0);
  for (size_t s = 0; s < split.shards.size(); ++s) {
    const ShardEntry& e = split.shards[s];
    const std::string path = files::Join(o.dir, e.file);
    int64_t bytes = 0;
    try {
      bytes = files::FileSize(path);
    } catch (const IoError&) {
      FT_THROW(DataError, "shard {} listed in the manifest is missing", path);
    }
    if (bytes != e.bytes) {
      FT_THROW(DataError, "shard {} has {} bytes, the manifest says {} (truncated or replaced)",
               path, bytes, e.bytes);
    }
    ShardReader r(path);
    if (r.tokenizer_sha256() != m.meta.tokenizer_sha256 || r.split() != o.split ||
        r.num_docs() != e.num_docs || r.num_tokens() != e.num_tokens) {
      FT_THROW(DataError, "shard {} does not match the manifest of {} (mixed datasets?)", path,
               o.dir);
    }
    const auto& off = r.doc_offsets();
    for (size_t d = 0; d + 1 < off.size(); ++d) {
      im.doc_shard.push_back(int32_t(s));
      im.doc_start.push_back(off[d]);
      im.doc_len.push_back(int32_t(off[d + 1] - off[d]));
    }
    im.total_tokens += r.num_tokens();
    im.shard_paths.push_back(path);
  }
  im.BuildIndex(o.seed);
  if (im.Used() == 0) {
    FT_THROW(DataError,
             "{}: the {} split has {} samples, fewer than one global batch (micro_batch {} x "
             "dp {})",
             o.dir, o.split, im.num_samples, o.micro_batch, o.dp_size);
  }
  im.state = {0, 0, o.seed};
  im.Start();
}

Loader::~Loader() { impl_->Stop(); }

Batch Loader::Next() {
  Impl& im = *impl_;
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(im.mu);
  im.cv.wait(lock, [&] { return !im.queue.empty() || im.error; });
  im.wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (im.queue.empty()) std::rethrow_exception(im.error);
  Impl::Item item = std::move(im.queue.front());
  im.queue.pop_front();
  im.cv.notify_all();
  im.state = item.after;
  return std::move(item.batch);
}

LoaderState Loader::state() const { return impl_->state; }

void Loader::Restore(const LoaderState& s) {
  impl_->Stop();
  if (s.seed != impl_->index_seed) impl_->BuildIndex(s.seed);  // worker stopped: safe
  impl_->state = s;
  impl_->Start();
}

int64_t Loader::samples_per_epoch() const { return impl_->Used(); }
int64_t Loader::num_samples() const { return impl_->num_samples; }
int64_t Loader::num_tokens() const { return impl_->total_tokens; }
double Loader::wait_seconds() const { return impl_->wait_s; }

}  // namespace ftune::data
