#include "data/prepare.h"

#include <glob.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <unordered_set>

#include "data/records.h"
#include "data/sha256.h"
#include "data/shards.h"
#include "data/templates.h"
#include "data/tokenizer.h"
#include "parallel/communicator.h"
#include "parallel/error.h"
#include "parallel/files.h"
#include "parallel/gather_strings.h"

namespace ftune::data {
using nlohmann::json;

namespace {

constexpr int64_t kChunkBytes = int64_t(4) << 20;  // spool bytes per broadcast
constexpr size_t kFirstLines = 5;                   // line numbers kept per reject reason

// The communicator, or this process alone when there is none.
class Coll {
 public:
  explicit Coll(parallel::Communicator* c) : c_(c) {}
  int rank() const { return c_ ? c_->rank() : 0; }
  int size() const { return c_ ? c_->size() : 1; }

  // Every rank's `local` (all the same length), concatenated in rank order.
  std::vector<int64_t> AllGather(const std::vector<int64_t>& local) const {
    if (!c_) return local;
    auto in = torch::tensor(local, torch::kLong);
    auto out = torch::empty({int64_t(local.size()) * size()}, torch::kLong);
    c_->AllGather(in, out)->Wait();
    return std::vector<int64_t>(out.data_ptr<int64_t>(), out.data_ptr<int64_t>() + out.numel());
  }
  std::vector<std::string> AllGatherBytes(const std::string& local) const {
    if (!c_) return {local};
    return parallel::AllGatherStrings(*c_, local);
  }
  std::string BroadcastString(std::string s, int root) const {
    if (!c_) return s;
    auto n = torch::tensor({int64_t(s.size())}, torch::kLong);
    c_->Broadcast(n, root)->Wait();
    auto t = torch::empty({n.item<int64_t>()}, torch::kUInt8);
    if (rank() == root && !s.empty()) std::memcpy(t.data_ptr<uint8_t>(), s.data(), s.size());
    c_->Broadcast(t, root)->Wait();
    return std::string(reinterpret_cast<const char*>(t.data_ptr<uint8_t>()), t.numel());
  }
  void Broadcast(at::Tensor& t, int root) const {
    if (c_) c_->Broadcast(t, root)->Wait();
  }
  void Barrier() const {
    if (c_) c_->Barrier()->Wait();
  }

 private:
  parallel::Communicator* c_;
};

// Raises the communicator's timeout for the duration of prepare: ranks legitimately wait
// in a collective while rank 0 writes (minutes for large inputs).
class TimeoutGuard {
 public:
  explicit TimeoutGuard(parallel::Communicator* c) : c_(c) {
    if (c_) {
      old_ = c_->timeout();
      c_->set_timeout(std::max(old_, 7 * 24 * 3600.0));
    }
  }
  ~TimeoutGuard() {
    if (c_) c_->set_timeout(old_);
  }

 private:
  parallel::Communicator* c_;
  double old_ = 0;
};

struct FileRef {
  std::string path;
  int64_t bytes = 0;
  int64_t offset = 0;  // in the concatenation of all inputs
  std::optional<RecordKind> kind;
};

// Lines of `path` whose first byte lies in [begin, end).
class RangeLineReader {
 public:
  RangeLineReader(const std::string& path, int64_t begin, int64_t end)
      : path_(path), end_(end), pos_(begin) {
    f_ = std::fopen(path.c_str(), "rb");
    if (!f_) FT_THROW(IoError, "cannot open {}: {}", path, std::strerror(errno));
    std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
    if (begin > 0) {
      // `begin` starts a line only if the byte before it ends one.
      if (std::fseek(f_, begin - 1, SEEK_SET) != 0) FT_THROW(IoError, "cannot seek {}", path);
      pos_ = begin - 1;
      if (std::fgetc(f_) != '\n') {
        ssize_t n = getline(&buf_, &cap_, f_);  // the rest of a line owned by an earlier range
        pos_ += 1 + (n > 0 ? n : 0);
      } else {
        pos_ = begin;
      }
    }
  }
  ~RangeLineReader() {
    if (f_) std::fclose(f_);
    std::free(buf_);
  }
  // Next line (without its '\n'); false at the end of the range.
  bool Next(std::string_view* line) {
    if (pos_ >= end_) return false;
    ssize_t n = getline(&buf_, &cap_, f_);
    if (n <= 0) return false;
    pos_ += n;
    size_t len = n;
    if (len > 0 && buf_[len - 1] == '\n') --len;
    *line = std::string_view(buf_, len);
    return true;
  }

 private:
  std::string path_;
  int64_t end_;
  int64_t pos_;
  FILE* f_ = nullptr;
  char* buf_ = nullptr;
  size_t cap_ = 0;
};

// Spool records: what one rank produced, in input order.
enum : uint8_t { kSpoolExample = 0, kSpoolReject = 1 };

class SpoolWriter {
 public:
  explicit SpoolWriter(const std::string& path) : path_(path) {
    f_ = std::fopen(path.c_str(), "wb");
    if (!f_) FT_THROW(IoError, "cannot create {}: {}", path, std::strerror(errno));
    std::setvbuf(f_, nullptr, _IOFBF, 4 << 20);
  }
  ~SpoolWriter() {
    if (f_) std::fclose(f_);
  }
  template <class T>
  void Put(const T& v) {
    Write(&v, sizeof(T));
  }
  void Write(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n) FT_THROW(IoError, "cannot write {}", path_);
  }
  int64_t Close() {
    if (std::fclose(f_) != 0) FT_THROW(IoError, "cannot write {}", path_);
    f_ = nullptr;
    return files::FileSize(path_);
  }

 private:
  std::string path_;
  FILE* f_ = nullptr;
};

// Reads a spool as a byte stream: rank 0's own from its file, another rank's from pieces
// that rank broadcasts (every rank runs the matching SendSpool loop).
class SpoolSource {
 public:
  SpoolSource(const Coll& coll, int root, const std::string& local_path, int64_t size)
      : coll_(coll), root_(root), size_(size) {
    if (root == coll.rank()) {
      f_ = std::fopen(local_path.c_str(), "rb");
      if (!f_) FT_THROW(IoError, "cannot open {}", local_path);
    }
  }
  ~SpoolSource() {
    if (f_) std::fclose(f_);
  }
  bool done() const { return consumed_ == size_; }
  template <class T>
  T Get() {
    T v;
    Read(&v, sizeof(T));
    return v;
  }
  void Read(void* dst, size_t n) {
    auto* out = static_cast<uint8_t*>(dst);
    while (n > 0) {
      if (at_ == chunk_.size()) Pull();
      const size_t take = std::min(n, chunk_.size() - at_);
      std::memcpy(out, chunk_.data() + at_, take);
      at_ += take;
      out += take;
      n -= take;
      consumed_ += take;
    }
  }

 private:
  void Pull() {
    const int64_t len = std::min(kChunkBytes, size_ - pulled_);
    FT_CHECK(len > 0, "spool of rank {} read past its end", root_);
    chunk_.resize(len);
    if (f_) {
      if (std::fread(chunk_.data(), 1, len, f_) != size_t(len)) {
        FT_THROW(IoError, "short read of the spool of rank {}", root_);
      }
    } else {
      auto t = torch::empty({len}, torch::kUInt8);
      coll_.Broadcast(t, root_);
      std::memcpy(chunk_.data(), t.data_ptr<uint8_t>(), len);
    }
    pulled_ += len;
    at_ = 0;
  }

  const Coll& coll_;
  int root_;
  int64_t size_;
  int64_t pulled_ = 0, consumed_ = 0;
  FILE* f_ = nullptr;
  std::vector<uint8_t> chunk_;
  size_t at_ = 0;
};

// The matching side of SpoolSource on ranks other than 0: every such rank takes part in
// each broadcast of rank `root`'s spool; `root` sends its file.
void SendSpool(const Coll& coll, int root, const std::string& local_path, int64_t size) {
  FILE* f = nullptr;
  if (coll.rank() == root) {
    f = std::fopen(local_path.c_str(), "rb");
    if (!f) FT_THROW(IoError, "cannot open {}", local_path);
  }
  std::unique_ptr<FILE, int (*)(FILE*)> guard(f, [](FILE* p) { return p ? std::fclose(p) : 0; });
  for (int64_t off = 0; off < size; off += kChunkBytes) {
    const int64_t len = std::min(kChunkBytes, size - off);
    auto t = torch::empty({len}, torch::kUInt8);
    if (f && std::fread(t.data_ptr<uint8_t>(), 1, len, f) != size_t(len)) {
      FT_THROW(IoError, "short read of {}", local_path);
    }
    coll.Broadcast(t, root);
  }
}

// Accumulates one split's documents and writes a shard when the next document would
// exceed shard_tokens (a longer document gets a shard of its own).
class ShardAccumulator {
 public:
  // `task_names` is the dataset's label table (shared by both splits, growing as labels
  // appear); Add's `task` indexes it (-1 = no label).
  ShardAccumulator(std::string dir, std::string split, const DatasetMeta& meta, int64_t limit,
                   const std::vector<std::string>& task_names)
      : dir_(std::move(dir)), split_(std::move(split)), meta_(meta), limit_(limit),
        task_names_(task_names) {}

  void Add(const std::vector<int32_t>& tok, const std::vector<uint8_t>& mask, int32_t task) {
    if (!tokens_.empty() && int64_t(tokens_.size() + tok.size()) > limit_) Flush();
    tokens_.insert(tokens_.end(), tok.begin(), tok.end());
    mask_.insert(mask_.end(), mask.begin(), mask.end());
    offsets_.push_back(int64_t(tokens_.size()));
    tasks_.push_back(task);
  }
  void Flush() {
    if (tokens_.empty()) return;
    const std::string name = ShardFileName(split_, int64_t(entry_.shards.size()));
    const std::string path = files::Join(dir_, name);
    DocTasks tasks;  // /doc_task only in shards holding a labelled document
    if (std::any_of(tasks_.begin(), tasks_.end(), [](int32_t t) { return t >= 0; })) {
      tasks = {task_names_, tasks_};
    }
    try {
      WriteShard(path, meta_, split_, int64_t(entry_.shards.size()), tokens_, mask_, offsets_,
                 tasks);
    } catch (...) {
      files::RemoveQuietly(path + ".tmp");
      throw;
    }
    ShardEntry e{name, int64_t(offsets_.size()) - 1, int64_t(tokens_.size()),
                 files::FileSize(path)};
    entry_.num_docs += e.num_docs;
    entry_.num_tokens += e.num_tokens;
    entry_.shards.push_back(e);
    tokens_.clear();
    mask_.clear();
    offsets_.assign(1, 0);
    tasks_.clear();
  }
  const SplitEntry& entry() const { return entry_; }

 private:
  std::string dir_, split_;
  const DatasetMeta& meta_;
  int64_t limit_;
  std::vector<int32_t> tokens_;
  std::vector<uint8_t> mask_;
  std::vector<int64_t> offsets_{0};
  const std::vector<std::string>& task_names_;
  std::vector<int32_t> tasks_;
  SplitEntry entry_;
};

uint64_t SplitKey(int64_t seed, const uint8_t* hash16) {
  Sha256 h;
  h.Update(&seed, sizeof(seed));
  h.Update(hash16, 16);
  auto d = h.Digest();
  uint64_t k = 0;
  for (int i = 0; i < 8; ++i) k = (k << 8) | d[i];
  return k;
}

bool IsOurFile(const std::string& name) {
  static const std::regex kOurs(R"((train|test)-\d{5}\.h5(\.tmp)?|manifest\.json(\.tmp)?|)"
                                R"(prepare_summary\.json(\.tmp)?|\.prepare-tmp)");
  return std::regex_match(name, kOurs);
}

std::string Fingerprint(const PrepareOptions& o, const std::string& tok_sha,
                        const json& sources, const std::string& chat_template_source) {
  const auto& d = o.data;
  json j = {{"format_version", kShardFormatVersion},
            {"tokenizer_sha256", tok_sha},
            {"sources", sources},
            {"format", d.format},
            {"template", d.template_name},
            {"max_seq_len", d.max_seq_len},
            {"overlong", d.overlong},
            {"train_on_prompt", d.train_on_prompt},
            {"shard_tokens", d.shard_tokens},
            {"task_field", d.task_field},
            {"compression", d.compression},
            {"split",
             {{"test_ratio", d.split.test_ratio},
              {"test_count", d.split.test_count},
              {"seed", d.split.seed},
              {"dedup", d.split.dedup}}}};
  if (!chat_template_source.empty()) {  // only chat datasets (older fingerprints stay valid)
    j["chat_template"] = {{"choice", d.chat_template},
                          {"kwargs", d.chat_template_kwargs},
                          {"sha256", Sha256Hex(chat_template_source)}};
  }
  return Sha256Hex(j.dump());
}

// One line -> an example or a reject (the per-rank work).
struct LineProcessor {
  LineProcessor(const Tokenizer& t, const Template& tm, const DataConfig& c)
      : tok(t), tmpl(tm), cfg(c) {}
  const Tokenizer& tok;
  const Template& tmpl;
  const DataConfig& cfg;
  Record record;
  RecordError err;
  std::vector<Segment> segments;
  ChatRender chat;
  Example ex;
  std::string task;  // the record's data.task_field value ("" = none)
  bool truncated = false;

  // Returns nullptr when `ex` holds a kept example, else the reject reason (detail in err).
  const char* Process(std::string_view line, std::optional<RecordKind> kind) {
    truncated = false;
    if (!ParseRecord(line, kind, &record, &err)) return err.reason;
    const std::string* label = cfg.task_field.empty() ? nullptr : record.Field(cfg.task_field);
    task = label ? *label : std::string();
    std::string msg;
    if (record.kind == RecordKind::kChat) {
      bool unsupported = false;
      if (!tmpl.RenderChat(record, cfg.train_on_prompt, &chat, &msg, &unsupported)) {
        err.detail = msg;
        return unsupported ? reject::kTemplateUnsupported : reject::kTemplate;
      }
      try {
        TokenizeChat(tok, chat, &ex.tokens, &ex.mask);
      } catch (const DataError& e) {
        err.detail = e.what();
        return reject::kTemplate;
      }
    } else {
      if (!tmpl.Render(record, &segments, &msg)) {
        err.detail = msg;
        return reject::kTemplate;
      }
      TokenizeOptions to;
      to.train_on_prompt = cfg.train_on_prompt;
      to.append_eos = tmpl.AppendsEos(record.kind);
      TokenizeExample(tok, segments, to, &ex);
    }
    if (int64_t(ex.tokens.size()) > cfg.max_seq_len) {
      if (cfg.overlong == "drop") {
        err.detail = fmt::format("{} tokens > data.max_seq_len {}", ex.tokens.size(),
                                 cfg.max_seq_len);
        return reject::kOverlong;
      }
      ex.tokens.resize(cfg.max_seq_len);
      ex.mask.resize(cfg.max_seq_len);
      truncated = true;
    }
    bool any = false;
    for (uint8_t m : ex.mask) any |= m != 0;
    if (!any) {
      err.detail = truncated ? "the response was truncated away by data.max_seq_len"
                             : "no response tokens (e.g. a chat without an assistant turn)";
      return reject::kNoTargets;
    }
    return nullptr;
  }
};

void AddStats(SplitStats* s, const std::vector<uint8_t>& mask) {
  s->examples += 1;
  s->tokens += int64_t(mask.size());
  for (uint8_t m : mask) s->masked_tokens += m == 0;
  s->max_len = std::max<int64_t>(s->max_len, int64_t(mask.size()));
}

json SplitJson(const SplitStats& s) {
  return {{"examples", s.examples},
          {"tokens", s.tokens},
          {"mean_len", s.examples ? double(s.tokens) / double(s.examples) : 0.0},
          {"max_len", s.max_len},
          {"masked_fraction", s.tokens ? double(s.masked_tokens) / double(s.tokens) : 0.0},
          {"shards", s.shards}};
}

void RunPreview(const PrepareOptions& opts, const std::vector<FileRef>& files,
                const Tokenizer& tok, const Template& tmpl) {
  LineProcessor proc(tok, tmpl, opts.data);
  const bool color = isatty(fileno(stdout)) && !std::getenv("NO_COLOR");
  int64_t shown = 0;
  for (const auto& f : files) {
    RangeLineReader reader(f.path, 0, f.bytes);
    std::string_view line;
    int64_t line_no = 0;
    while (shown < opts.preview && reader.Next(&line)) {
      ++line_no;
      if (IsBlankLine(line)) continue;
      if (const char* reason = proc.Process(line, f.kind)) {
        fmt::print("--- {}:{} rejected ({}): {}\n", f.path, line_no, reason, proc.err.detail);
        continue;
      }
      int64_t trained = 0;
      for (uint8_t m : proc.ex.mask) trained += m;
      fmt::print("--- example {} ({}:{}, {} tokens, {} trained{}) ---\n{}\n", ++shown, f.path,
                 line_no, proc.ex.tokens.size(), trained, proc.truncated ? ", truncated" : "",
                 PreviewExample(tok, proc.ex, color));
    }
  }
  fmt::print("--- {} example(s) shown; {}; nothing was written (drop --preview to prepare)\n",
             shown, color ? "\x1b[32mgreen\x1b[0m is trained on, \x1b[2mdim\x1b[0m is not"
                          : "[PROMPT]...[/PROMPT] is not trained on");
  std::fflush(stdout);
}

}  // namespace

int64_t PrepareSummary::rejected_total() const {
  int64_t n = 0;
  for (const auto& [k, v] : rejected) n += v.count;
  return n;
}

std::string PrepareSummary::ToJson() const {
  json rej = json::object();
  for (const auto& [k, v] : rejected) {
    rej[k] = {{"count", v.count}, {"first_lines", v.first}, {"first_detail", v.first_detail}};
  }
  json j = {{"files", files},
            {"input_bytes", input_bytes},
            {"records_read", records_read},
            {"kept", {{"train", train.examples}, {"test", test.examples}}},
            {"rejected_total", rejected_total()},
            {"rejected", rej},
            {"truncated", truncated},
            {"duplicates_removed", duplicates_removed},
            {"splits", {{"train", SplitJson(train)}, {"test", SplitJson(test)}}}};
  if (!tasks.empty()) {
    json t = json::object();
    for (const auto& [name, n] : tasks) t[name] = {{"train", n.first}, {"test", n.second}};
    j["tasks"] = t;
  }
  return j.dump(1) + "\n";
}

std::string PrepareSummary::ToText() const {
  std::string s = fmt::format("prepare summary: {} file(s), {:.1f} MB, {} records read\n",
                              files.size(), input_bytes / 1e6, records_read);
  for (const auto* sp : {&train, &test}) {
    const char* name = sp == &train ? "train" : "test";
    s += fmt::format(
        "  {:<5} kept {:>9} | tokens {:>11} | mean len {:>7.1f} | max len {:>6} | masked "
        "{:>5.1f}% | {} shard(s)\n",
        name, sp->examples, sp->tokens, sp->examples ? double(sp->tokens) / sp->examples : 0.0,
        sp->max_len, sp->tokens ? 100.0 * sp->masked_tokens / sp->tokens : 0.0, sp->shards);
  }
  s += fmt::format("  truncated to max_seq_len: {} | duplicates removed: {} | rejected: {}\n",
                   truncated, duplicates_removed, rejected_total());
  if (!tasks.empty()) {
    std::string t;
    for (const auto& [name, n] : tasks) {
      t += fmt::format("{}{} {}/{}", t.empty() ? "" : ", ", name, n.first, n.second);
    }
    s += fmt::format("  tasks (train/test): {}\n", t);
  }
  for (const auto& [k, v] : rejected) {
    std::string lines;
    for (const auto& l : v.first) lines += (lines.empty() ? "" : ", ") + l;
    s += fmt::format("    {:<18} {:>7}  first at {}  ({})\n", k, v.count, lines, v.first_detail);
  }
  return s;
}

std::vector<std::string> ExpandInputs(const std::vector<std::string>& patterns) {
  if (patterns.empty()) {
    FT_THROW(ConfigError, "data.inputs is empty: list the JSONL files (globs allowed)");
  }
  std::vector<std::string> files;
  std::set<std::string> seen;
  for (const auto& p : patterns) {
    glob_t g{};
    const int rc = ::glob(p.c_str(), GLOB_ERR, nullptr, &g);
    std::vector<std::string> found;
    if (rc == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) found.emplace_back(g.gl_pathv[i]);
    }
    globfree(&g);
    if (found.empty()) {
      FT_THROW(DataError, "data.inputs: '{}' matches no file", p);
    }
    std::sort(found.begin(), found.end());
    for (auto& f : found) {
      if (files::IsDirectory(f)) FT_THROW(DataError, "data.inputs: '{}' is a directory", f);
      if (seen.insert(f).second) files.push_back(f);
    }
  }
  return files;
}

PrepareSummary Prepare(const PrepareOptions& opts, parallel::Communicator* comm) {
  const auto t0 = std::chrono::steady_clock::now();
  const Coll coll(comm);
  TimeoutGuard timeout_guard(comm);
  const DataConfig& cfg = opts.data;
  if (opts.tokenizer_path.empty()) {
    FT_THROW(ConfigError, "prepare needs a tokenizer: set tokenizer.path or model.path");
  }
  const Tokenizer tok = Tokenizer::FromPath(opts.tokenizer_path);
  Template tmpl = Template::Parse(cfg.template_name);
  const auto forced = KindFromFormat(cfg.format);

  // Inputs, their kinds, and which template renders them.
  std::vector<FileRef> files;
  int64_t total_bytes = 0;
  for (const auto& path : ExpandInputs(cfg.inputs)) {
    FileRef f;
    f.path = path;
    f.bytes = files::FileSize(path);
    f.offset = total_bytes;
    f.kind = forced ? forced : DetectFileKind(path);
    if (f.kind) {
      const std::string why = tmpl.CheckKind(*f.kind);
      if (!why.empty()) FT_THROW(DataError, "{}: {}", path, why);
    }
    total_bytes += f.bytes;
    files.push_back(f);
  }
  bool any_chat = cfg.template_name == "chat";
  for (const auto& f : files) any_chat |= f.kind == RecordKind::kChat;
  if (any_chat) {
    // The model's own template, checked against the tokenizer before any record is read.
    ChatTemplate chat = ChatTemplate::Resolve(opts.tokenizer_path, cfg.chat_template,
                                              cfg.chat_template_kwargs);
    chat.CheckTokenizer(tok);
    tmpl.UseChatTemplate(std::move(chat));
  }

  if (opts.preview > 0) {
    if (coll.rank() == 0) RunPreview(opts, files, tok, tmpl);
    return {};
  }

  // Source sha256s: file i on rank i % size.
  std::string my_hashes;
  for (size_t i = 0; i < files.size(); ++i) {
    my_hashes += (int(i % coll.size()) == coll.rank()) ? Sha256File(files[i].path)
                                                       : std::string(64, '0');
  }
  const auto all_hashes = coll.AllGatherBytes(my_hashes);
  json sources = json::array();
  for (size_t i = 0; i < files.size(); ++i) {
    sources.push_back({{"path", files[i].path},
                       {"sha256", all_hashes[i % coll.size()].substr(64 * i, 64)},
                       {"bytes", files[i].bytes}});
  }
  const std::string fingerprint = Fingerprint(
      opts, tok.sha256(), sources, tmpl.chat_template() ? tmpl.chat_template()->source() : "");

  // The output directory: refuse a different dataset, clear leftovers (rank 0).
  const std::string& out = opts.out_dir;
  std::string dir_error;
  if (coll.rank() == 0) {
    try {
      files::CreateDirectories(out);
    } catch (const IoError& e) {
      dir_error = fmt::format("data.dir {}: {}", out, e.what());
    }
    if (dir_error.empty() && files::Exists(files::Join(out, kManifestName))) {
      std::string old;
      try {
        old = ReadManifest(out).fingerprint;
      } catch (const Error&) {
        old = "(unreadable)";
      }
      if (old != fingerprint && !opts.overwrite) {
        dir_error = fmt::format(
            "{} already holds a different prepared dataset (other inputs or settings); pass "
            "--overwrite to replace it, or set data.dir to another directory",
            out);
      }
    }
    if (dir_error.empty()) {
      // First the manifest: the directory no longer looks complete.
      files::RemoveQuietly(files::Join(out, kManifestName));
      for (const auto& name : files::ListDir(out)) {
        if (IsOurFile(name)) files::RemoveAllQuietly(files::Join(out, name));
      }
    }
  }
  dir_error = coll.BroadcastString(dir_error, 0);
  if (!dir_error.empty()) throw DataError(dir_error);

  // Pass 1: this rank's byte range -> spool.
  const std::string tmp_dir = files::Join(out, ".prepare-tmp");
  files::CreateDirectories(tmp_dir);
  const std::string spool_path = files::Join(tmp_dir, fmt::format("spool-{}.bin", coll.rank()));
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      files::RemoveQuietly(path);
      files::RemoveQuietly(files::Parent(path));  // only when empty
    }
  } cleanup{spool_path};

  const int64_t lo = total_bytes * coll.rank() / coll.size();
  const int64_t hi = total_bytes * (coll.rank() + 1) / coll.size();
  const int64_t k_test = cfg.split.test_count;
  std::vector<int64_t> line_counts(files.size(), 0), record_counts(files.size(), 0);
  std::set<uint64_t> smallest;  // split.test_count: this rank's smallest distinct keys
  std::string strict_error;
  int64_t strict_file = -1, strict_line = 0;
  int64_t spool_size = 0;
  {
    SpoolWriter spool(spool_path);
    LineProcessor proc(tok, tmpl, cfg);
    for (size_t fi = 0; fi < files.size() && strict_file < 0; ++fi) {
      const FileRef& f = files[fi];
      const int64_t a = std::max(lo, f.offset), b = std::min(hi, f.offset + f.bytes);
      if (a >= b) continue;
      RangeLineReader reader(f.path, a - f.offset, b - f.offset);
      std::string_view line;
      while (reader.Next(&line)) {
        const int64_t local_line = line_counts[fi]++;
        if (IsBlankLine(line)) continue;
        ++record_counts[fi];
        const char* reason = proc.Process(line, f.kind);
        spool.Put<uint8_t>(reason ? kSpoolReject : kSpoolExample);
        spool.Put<uint32_t>(uint32_t(fi));
        spool.Put<int64_t>(local_line);
        if (reason) {
          spool.Put<uint8_t>(uint8_t(std::strlen(reason)));
          spool.Write(reason, std::strlen(reason));
          spool.Put<uint32_t>(uint32_t(proc.err.detail.size()));
          spool.Write(proc.err.detail.data(), proc.err.detail.size());
          if (cfg.strict || reason == reject::kTemplateUnsupported) {
            strict_file = int64_t(fi);
            strict_line = local_line;
            strict_error = fmt::format("{}: {}", reason, proc.err.detail);
            break;
          }
          continue;
        }
        const auto& ex = proc.ex;
        Sha256 h;
        h.Update(ex.tokens.data(), ex.tokens.size() * 4);
        h.Update(ex.mask.data(), ex.mask.size());
        const auto digest = h.Digest();
        const uint64_t key = SplitKey(cfg.split.seed, digest.data());
        if (k_test > 0) {
          smallest.insert(key);
          if (int64_t(smallest.size()) > k_test) smallest.erase(std::prev(smallest.end()));
        }
        spool.Put<uint8_t>(proc.truncated);
        spool.Put<int64_t>(int64_t(ex.tokens.size()));
        spool.Write(ex.tokens.data(), ex.tokens.size() * 4);
        spool.Write(ex.mask.data(), ex.mask.size());
        spool.Put<uint64_t>(key);
        spool.Write(digest.data(), 16);
        spool.Put<uint32_t>(uint32_t(proc.task.size()));
        spool.Write(proc.task.data(), proc.task.size());
      }
    }
    spool_size = spool.Close();
  }

  // Exchange what rank 0 needs to put every rank's output in global order.
  std::vector<int64_t> mine = line_counts;
  mine.insert(mine.end(), record_counts.begin(), record_counts.end());
  mine.push_back(spool_size);
  mine.push_back(strict_file);
  mine.push_back(strict_line);
  const auto gathered = coll.AllGather(mine);
  const size_t nf = files.size(), stride = 2 * nf + 3;
  auto at = [&](int r, size_t i) { return gathered[r * stride + i]; };
  // line_base[r][f]: lines of file f before rank r's part of it.
  std::vector<std::vector<int64_t>> line_base(coll.size(), std::vector<int64_t>(nf, 0));
  std::vector<int64_t> file_records(nf, 0);
  for (int r = 0; r < coll.size(); ++r) {
    for (size_t f = 0; f < nf; ++f) {
      line_base[r][f] = r == 0 ? 0 : line_base[r - 1][f] + at(r - 1, f);
      file_records[f] += at(r, nf + f);
    }
  }
  PrepareSummary summary;
  summary.tokenizer_notes = tok.notes();
  for (const auto& f : files) summary.files.push_back(f.path);
  summary.input_bytes = total_bytes;
  for (auto n : file_records) summary.records_read += n;

  auto add_reject = [&](const std::string& reason, const std::string& where,
                        const std::string& detail) {
    auto& r = summary.rejected[reason];
    if (r.count == 0) r.first_detail = detail;
    ++r.count;
    if (r.first.size() < kFirstLines) r.first.push_back(where);
  };

  // Strict mode (or a chat template ftune cannot render): the first bad record in input order
  // (in strict mode an empty file counts at its start).
  bool any_stopped = false;
  for (int r = 0; r < coll.size(); ++r) any_stopped |= at(r, 2 * nf + 1) >= 0;
  if (cfg.strict || any_stopped) {
    int64_t best_file = int64_t(nf), best_line = 0;
    int best_rank = -1;
    for (size_t f = 0; f < nf && cfg.strict; ++f) {
      if (file_records[f] == 0) {
        best_file = int64_t(f);
        break;
      }
    }
    for (int r = 0; r < coll.size(); ++r) {
      const int64_t f = at(r, 2 * nf + 1);
      if (f >= 0 && f < best_file) {
        best_file = f;
        best_line = at(r, 2 * nf + 2);
        best_rank = r;
      }
    }
    if (best_file < int64_t(nf)) {
      std::string msg;
      if (best_rank < 0) {
        msg = fmt::format("{}: empty_file: no records (data.strict is set)", files[best_file].path);
      } else {
        const auto texts = coll.AllGatherBytes(strict_error);
        const bool unsupported =
            texts[best_rank].rfind(reject::kTemplateUnsupported, 0) == 0;
        msg = fmt::format("{}:{}: {} ({})", files[best_file].path,
                          line_base[best_rank][best_file] + best_line + 1, texts[best_rank],
                          unsupported ? "ftune cannot render this chat template; nothing was "
                                        "written: set data.chat_template to a template without "
                                        "the construct"
                                      : "data.strict is set; unset it to skip bad records");
      }
      throw DataError(msg);
    }
  }

  // split.test_count: the threshold key of the global test_count smallest distinct keys.
  uint64_t count_threshold = 0;
  bool any_test_by_count = false;
  if (k_test > 0) {
    std::string local;
    for (uint64_t k : smallest) local.append(reinterpret_cast<const char*>(&k), 8);
    std::set<uint64_t> global;
    for (const auto& s : coll.AllGatherBytes(local)) {
      for (size_t i = 0; i + 8 <= s.size(); i += 8) {
        uint64_t k;
        std::memcpy(&k, s.data() + i, 8);
        global.insert(k);
      }
    }
    if (!global.empty()) {
      auto it = global.begin();
      std::advance(it, std::min<int64_t>(k_test, int64_t(global.size())) - 1);
      count_threshold = *it;
      any_test_by_count = true;
    }
  }
  const double ratio = cfg.split.test_ratio;
  auto is_test = [&](uint64_t key) {
    if (k_test >= 0) return any_test_by_count && key <= count_threshold;
    if (ratio >= 1.0) return true;
    return static_cast<long double>(key) < static_cast<long double>(ratio) * 18446744073709551616.0L;
  };

  // Pass 2 (rank 0 writes; the others stream their spools to it).
  DatasetMeta meta;
  meta.tokenizer_sha256 = tok.sha256();
  meta.vocab_size = tok.vocab_size();
  meta.bos_id = tok.bos_id();
  for (int32_t e : tok.eos_ids()) meta.eos_ids.push_back(e);
  meta.pad_id = tok.pad_id();
  meta.template_name = cfg.template_name;
  if (tmpl.spec() == "auto") {
    std::set<std::string> used;
    for (const auto& f : files) {
      if (f.kind) used.insert(tmpl.ResolvedName(*f.kind));
    }
    meta.template_name = "auto";
    for (const auto& u : used) meta.template_name += (meta.template_name == "auto" ? ":" : ",") + u;
  }
  meta.sources_json = sources.dump();
  meta.compression = int(cfg.compression);

  std::string final_error;
  if (coll.rank() == 0) {
    std::vector<std::string> task_names;  // labels in order of first appearance
    std::map<std::string, int32_t> task_ids;
    ShardAccumulator train(out, "train", meta, cfg.shard_tokens, task_names);
    ShardAccumulator test(out, "test", meta, cfg.shard_tokens, task_names);
    std::string task;
    std::unordered_set<std::string> seen;
    std::vector<int32_t> tokens;
    std::vector<uint8_t> mask;
    for (int r = 0; r < coll.size(); ++r) {
      SpoolSource src(coll, r, spool_path, at(r, 2 * nf));
      while (!src.done()) {
        const auto type = src.Get<uint8_t>();
        const auto fi = src.Get<uint32_t>();
        const auto local_line = src.Get<int64_t>();
        const std::string where =
            fmt::format("{}:{}", files.at(fi).path, line_base[r][fi] + local_line + 1);
        if (type == kSpoolReject) {
          std::string reason(src.Get<uint8_t>(), '\0');
          src.Read(reason.data(), reason.size());
          std::string detail(src.Get<uint32_t>(), '\0');
          src.Read(detail.data(), detail.size());
          add_reject(reason, where, detail);
          continue;
        }
        const bool truncated = src.Get<uint8_t>() != 0;
        const auto n = src.Get<int64_t>();
        tokens.resize(n);
        mask.resize(n);
        src.Read(tokens.data(), n * 4);
        src.Read(mask.data(), n);
        const auto key = src.Get<uint64_t>();
        std::string hash(16, '\0');
        src.Read(hash.data(), 16);
        task.resize(src.Get<uint32_t>());
        src.Read(task.data(), task.size());
        if (cfg.split.dedup && !seen.insert(hash).second) {
          ++summary.duplicates_removed;
          continue;
        }
        summary.truncated += truncated;
        int32_t task_id = -1;
        if (!task.empty()) {
          auto [it, added] = task_ids.emplace(task, int32_t(task_names.size()));
          if (added) task_names.push_back(task);
          task_id = it->second;
        }
        const bool in_test = is_test(key);
        if (in_test) {
          test.Add(tokens, mask, task_id);
          AddStats(&summary.test, mask);
        } else {
          train.Add(tokens, mask, task_id);
          AddStats(&summary.train, mask);
        }
        if (!task.empty()) {
          auto& counts = summary.tasks[task];
          (in_test ? counts.second : counts.first) += 1;
        }
      }
    }
    for (size_t f = 0; f < nf; ++f) {
      if (file_records[f] == 0) add_reject(reject::kEmptyFile, files[f].path, "no records");
    }
    if (summary.train.examples + summary.test.examples == 0) {
      final_error = fmt::format(
          "no example left after filtering ({} records read, {} rejected): see the reasons "
          "above; nothing was written",
          summary.records_read, summary.rejected_total());
      fmt::print(stderr, "{}", summary.ToText());
    } else {
      train.Flush();
      test.Flush();
      summary.train.shards = int64_t(train.entry().shards.size());
      summary.test.shards = int64_t(test.entry().shards.size());
      {
        const std::string path = files::Join(out, kSummaryName);
        std::ofstream o(path + ".tmp", std::ios::binary);
        o << summary.ToJson();
        o.close();
        if (!o) FT_THROW(IoError, "cannot write {}", path);
        files::Rename(path + ".tmp", path);
      }
      Manifest m;
      m.fingerprint = fingerprint;
      m.meta = meta;
      m.max_seq_len = cfg.max_seq_len;
      m.train_on_prompt = cfg.train_on_prompt;
      m.train = train.entry();
      m.test = test.entry();
      WriteManifest(out, m);  // last: the dataset is complete
      files::RemoveAllQuietly(tmp_dir);
    }
  } else {
    for (int r = 1; r < coll.size(); ++r) SendSpool(coll, r, spool_path, at(r, 2 * nf));
  }
  final_error = coll.BroadcastString(final_error, 0);
  if (!final_error.empty()) throw DataError(final_error);
  summary.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return summary;
}

}  // namespace ftune::data
