// Collective checkpoints (runtime/checkpoint.h) under mpirun at 2 and 4 ranks: save/load
// round trips in every layout, resharding between layouts (in-process, over sub-communicators),
// fallback past damaged checkpoints, write errors, async saves. Tiny fp32 Llama, synthetic data.
//
// Ground truth never comes from the code under test alone: the full parameters are gathered
// through the model (GatherAll + tensor-parallel GatherFull) and compared with what a
// one-process reader finds in the file (whose whole-tensor crc32 must also match the
// collectively combined one); after resharding, saving again must give bit-identical tensors.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <thread>

#include "models/hf_io.h"
#include "models/llama.h"
#include "parallel/files.h"
#include "parallel/process_grid.h"
#include "runtime/checkpoint.h"
#include "runtime/config.h"
#include "runtime/parallelize.h"
#include "runtime/trainer.h"
#include "tests/learnable_batch.h"
#include "tests/mpi_test_env.h"

namespace ftune::runtime {
namespace {

using ftune::testing::TestWorld;

constexpr int64_t kSeq = 16;
constexpr int64_t kVocab = 96;
constexpr int64_t kGlobalBatch = 8;  // samples per step, whatever the layout
constexpr int64_t kTotalSteps = 20;

Config TinyConfig(int64_t zero, int64_t tp) {
  Config c = LoadConfig("", {}, {});
  c.model.arch.vocab_size = kVocab;
  c.model.arch.hidden_size = 32;
  c.model.arch.intermediate_size = 64;
  c.model.arch.num_hidden_layers = 2;
  c.model.arch.num_attention_heads = 4;
  c.model.arch.num_key_value_heads = 2;
  c.data.max_seq_len = kSeq;
  c.train.steps = kTotalSteps;
  c.optim.lr = 3e-3;
  c.optim.weight_decay = 0.1;
  c.optim.warmup_steps = 2;
  c.parallel.zero = zero;
  c.parallel.tp = tp;
  c.parallel.bucket_mb = 0.01;  // several buckets, so ZeRO slices cut through parameters
  c.parallel.timeout_s = 120;
  c.checkpoint.keep = 3;
  c.log.jsonl = false;
  return c;
}

data::Batch Samples(int64_t step, int64_t first, int64_t count) {
  return ftune::testing::LearnableBatch(step, first, count, kSeq, kVocab, 5);
}

// One training job: a layout (tp, zero; dp = ranks / tp) over a communicator.
struct Job {
  Config cfg;
  std::unique_ptr<parallel::ProcessGrid> grid;
  std::shared_ptr<models::LlamaModel> model;
  std::unique_ptr<Trainer> trainer;
  std::unique_ptr<CheckpointManager> ckpt;
  std::string name;

  Job(parallel::Communicator& comm, int64_t tp, int64_t zero, const std::string& dir,
      bool async = false)
      : cfg(TinyConfig(zero, tp)) {
    cfg.checkpoint.async = async;
    grid = std::make_unique<parallel::ProcessGrid>(comm, -1, tp);
    auto full = models::BuildLlama(models::LlamaConfig::FromInline(cfg.model), torch::kFloat,
                                   cfg.model.init_seed);
    model = tp > 1 ? std::shared_ptr<models::LlamaModel>(MakeTensorParallel(*full, *grid)) : full;
    trainer = std::make_unique<Trainer>(TestWorld(), cfg, model, *grid);
    ckpt = std::make_unique<CheckpointManager>(cfg, *grid, trainer->data_parallel(),
                                               model->config(), dir);
    name = fmt::format("dp={} tp={} zero={} on {} rank(s)", grid->dp(), tp, zero, comm.size());
  }

  double Step() {
    const int64_t step = trainer->step() + 1, mb = kGlobalBatch / grid->dp();
    return trainer->TrainStep({Samples(step, grid->dp_rank() * mb, mb)}, kTotalSteps).loss;
  }
  void Save() {
    TrainState s;
    s.step = trainer->step();
    s.total_steps = kTotalSteps;
    s.tokens_seen = s.step * kGlobalBatch * kSeq;
    s.loader = {0, s.step * kGlobalBatch, 7};
    ckpt->Save(s);
  }
  // Full (unsharded) parameters, on every rank.
  std::map<std::string, at::Tensor> FullParams() {
    trainer->parallel().GatherAll();
    std::map<std::string, at::Tensor> out;
    auto* tp = dynamic_cast<TensorParallelLlama*>(model.get());
    for (const auto& p : model->named_parameters()) {
      auto t = p.value().detach().clone().contiguous();
      if (tp) t = GatherFull(t, tp->layout().at(p.key()), grid->tp_comm());
      out[p.key()] = t;
    }
    trainer->parallel().ReleaseAll();
    return out;
  }
};

// Every tensor dataset of a checkpoint file (one process, plain HDF5) for parameters `names`:
// dataset name -> values (flat).
std::map<std::string, at::Tensor> ReadAllTensors(const std::string& path,
                                                 const std::vector<std::string>& names) {
  std::map<std::string, at::Tensor> out;
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  EXPECT_GE(f, 0) << path;
  for (const auto& n : names) {
    for (const std::string ds_name : {"/model/" + n, "/optim/" + n + "/exp_avg",
                                      "/optim/" + n + "/exp_avg_sq"}) {
      hid_t ds = H5Dopen2(f, ds_name.c_str(), H5P_DEFAULT);
      EXPECT_GE(ds, 0) << path << " " << ds_name;
      if (ds < 0) continue;
      hid_t sp = H5Dget_space(ds);
      auto t = at::empty({H5Sget_simple_extent_npoints(sp)}, at::kFloat);
      H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr<float>());
      out[ds_name] = t;
      H5Sclose(sp);
      H5Dclose(ds);
    }
  }
  H5Fclose(f);
  return out;
}

std::vector<std::string> Names(const std::map<std::string, at::Tensor>& params) {
  std::vector<std::string> out;
  for (const auto& kv : params) out.push_back(kv.first);
  return out;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto& comm = TestWorld().comm();
    const std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    root_ = files::Join(FTUNE_BINARY_DIR,
                        fmt::format("test_tmp/checkpoint_test_np{}/{}", comm.size(), test));
    if (comm.rank() == 0) {
      files::RemoveAll(root_);
      files::CreateDirectories(root_);
    }
    comm.Barrier()->Wait();
  }
  void Barrier() { TestWorld().comm().Barrier()->Wait(); }
  bool Root() const { return TestWorld().rank() == 0; }
  std::string Dir(const std::string& name) const { return files::Join(root_, name); }
  std::string root_;
};

void ExpectEqualMaps(const std::map<std::string, at::Tensor>& got,
                     const std::map<std::string, at::Tensor>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (const auto& [name, w] : want) {
    ASSERT_TRUE(got.count(name)) << what << ": " << name << " missing";
    EXPECT_TRUE(torch::equal(got.at(name).reshape(-1), w.reshape(-1)))
        << what << ": " << name << " differs";
  }
}

TEST_F(CheckpointTest, RoundTripInEveryLayout) {
  auto& world = TestWorld().comm();
  struct Layout {
    int64_t tp, zero;
    bool direct_io = true;  // false: the slices go through MPI-IO instead
  };
  for (Layout l : {Layout{1, 0}, Layout{1, 1}, Layout{1, 3}, Layout{2, 0}, Layout{2, 2},
                   Layout{1, 3, false}, Layout{2, 2, false}}) {
    const std::string dir = Dir(fmt::format("tp{}_zero{}_direct{}", l.tp, l.zero, l.direct_io));
    Job a(world, l.tp, l.zero, dir);
    a.cfg.checkpoint.direct_io = l.direct_io;
    a.Step();
    a.Step();
    a.Save();
    const auto params = a.FullParams();
    const double next = a.Step();
    // The file holds exactly the model's full parameters (one-process reader, crc32 verified).
    if (Root()) {
      const std::string path = dir + "/step_00000002.h5";
      const auto meta = ReadCheckpointMeta(path);
      EXPECT_EQ(meta.state.step, 2);
      EXPECT_EQ(meta.state.loader.cursor, 2 * kGlobalBatch);
      EXPECT_EQ(meta.tp, l.tp);
      EXPECT_EQ(meta.zero, l.zero);
      EXPECT_EQ(meta.world_size, world.size());
      std::map<std::string, at::Tensor> file;
      for (auto& [n, t] : ReadCheckpointModel(path, meta)) file[n] = t;
      ExpectEqualMaps(file, params, a.name);
    }
    // A fresh job of the same layout resumes exactly: same parameters, same next loss.
    Job b(world, l.tp, l.zero, dir);
    auto meta = b.ckpt->LoadLatest();
    ASSERT_TRUE(meta.has_value());
    EXPECT_EQ(meta->state.step, 2);
    b.trainer->set_step(meta->state.step);
    ExpectEqualMaps(b.FullParams(), params, b.name + " after load");
    EXPECT_EQ(b.Step(), next) << b.name;
  }
}

TEST_F(CheckpointTest, ReshardsBetweenLayouts) {
  auto& world = TestWorld().comm();
  const int n = world.size();
  const std::string dir_a = Dir("a");
  // Written by dp = n, ZeRO-3; the uninterrupted run goes on for 3 steps.
  Job a(world, 1, 3, dir_a);
  for (int i = 0; i < 3; ++i) a.Step();
  a.Save();
  const auto params = a.FullParams();
  std::vector<double> want;
  for (int i = 0; i < 3; ++i) want.push_back(a.Step());
  Barrier();
  std::map<std::string, at::Tensor> file_a;
  if (Root()) file_a = ReadAllTensors(dir_a + "/step_00000003.h5", Names(params));

  auto self = world.Split(world.rank(), 0, "self");
  auto pair = world.Split(world.rank() / 2, world.rank() % 2, "pair");
  struct Target {
    parallel::Communicator* comm;
    int64_t tp, zero;
  };
  std::vector<Target> targets = {{&world, 2, 1}, {pair.get(), 2, 3}, {self.get(), 1, 0}};
  if (n == 4) targets.push_back({&world, 1, 2});
  for (const auto& t : targets) {
    // Each group of ranks writes its own directory (the 1-rank groups one each).
    const std::string dir_b =
        Dir(fmt::format("b_{}ranks_tp{}_zero{}_{}", t.comm->size(), t.tp, t.zero,
                        world.rank() / t.comm->size()));
    Job b(*t.comm, t.tp, t.zero, dir_b);
    const std::string src = dir_a + "/step_00000003.h5";
    const auto meta = b.ckpt->Load(src);
    EXPECT_EQ(meta.zero, 3);
    EXPECT_EQ(meta.dp, n);
    b.trainer->set_step(meta.state.step);
    ExpectEqualMaps(b.FullParams(), params, b.name + " loaded from dp=" + std::to_string(n));
    // Saving again in the new layout gives bit-identical tensors (moments included).
    b.Save();
    b.ckpt->Wait();
    if (t.comm->rank() == 0 && (Root() || t.comm->size() == 1)) {
      auto file_b = ReadAllTensors(dir_b + "/step_00000003.h5", Names(params));
      auto ref = Root() ? file_a : ReadAllTensors(src, Names(params));
      ExpectEqualMaps(file_b, ref, b.name + " re-saved");
    }
    for (int i = 0; i < 3; ++i) {
      const double got = b.Step();
      EXPECT_NEAR(got, want[i], 1e-5 * std::abs(want[i])) << b.name << " step " << 4 + i;
    }
  }
}

// The file offset of the middle of a dataset's data (contiguous layout).
std::streamoff MiddleOfDataset(const std::string& path, const std::string& dataset) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t ds = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  const haddr_t off = H5Dget_offset(ds);
  const hsize_t size = H5Dget_storage_size(ds);
  H5Dclose(ds);
  H5Fclose(f);
  EXPECT_NE(off, HADDR_UNDEF) << path << " " << dataset;
  return static_cast<std::streamoff>(off + size / 2);
}

// Flips bytes in the middle of a dataset's data (contiguous layout) without touching metadata.
void CorruptDataset(const std::string& path, const std::string& dataset) {
  const std::streamoff at = MiddleOfDataset(path, dataset);
  std::fstream io(path, std::ios::in | std::ios::out | std::ios::binary);
  io.seekp(at);
  const char junk[4] = {'\x13', '\x37', '\x42', '\x24'};
  io.write(junk, 4);
}

TEST_F(CheckpointTest, FallsBackPastDamagedCheckpoints) {
  auto& world = TestWorld().comm();
  const std::string dir = Dir("ckpt");
  Job a(world, 1, 1, dir);
  std::map<std::string, at::Tensor> at_step1;
  for (int s = 1; s <= 3; ++s) {
    a.Step();
    a.Save();
    if (s == 1) at_step1 = a.FullParams();
  }
  Barrier();
  if (Root()) {
    std::ifstream latest(dir + "/latest");
    std::string l;
    std::getline(latest, l);
    EXPECT_EQ(l, "step_00000003.h5");
    CorruptDataset(dir + "/step_00000003.h5", "/optim/model.layers.1.mlp.up_proj.weight/exp_avg");
    files::ResizeFile(dir + "/step_00000002.h5", files::FileSize(dir + "/step_00000002.h5") / 2);
  }
  Barrier();
  {
    Job b(world, 1, 2, dir);
    auto meta = b.ckpt->LoadLatest();
    ASSERT_TRUE(meta.has_value());
    EXPECT_EQ(meta->state.step, 1);
    ExpectEqualMaps(b.FullParams(), at_step1, "fallback to step 1");
  }
  // A one-process reader (export) detects the bad checksum too.
  if (Root()) {
    const std::string p3 = dir + "/step_00000003.h5";
    // The corrupt tensor is a moment: the model tensors still verify ...
    EXPECT_NO_THROW(ReadCheckpointModel(p3, ReadCheckpointMeta(p3)));
    CorruptDataset(p3, "/model/model.norm.weight");
    EXPECT_THROW(ReadCheckpointModel(p3, ReadCheckpointMeta(p3)), CorruptCheckpointError);
    // ... and a missing dataset in the last good one leaves nothing usable.
    hid_t f = H5Fopen((dir + "/step_00000001.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, "/model/model.layers.0.self_attn.k_proj.weight", H5P_DEFAULT);
    H5Fclose(f);
  }
  Barrier();
  Job c(world, 1, 0, dir);
  try {
    c.ckpt->LoadLatest();
    ADD_FAILURE() << "loading with no usable checkpoint did not throw";
  } catch (const CorruptCheckpointError& e) {
    ADD_FAILURE() << "wrong error type: " << e.what();
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("none of the 3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--no-resume"), std::string::npos) << e.what();
  }
}

// Flips bit `bit` of the stored value of /state attribute `attr` in the file itself: the value
// bytes follow the attribute's name in its object header message (HDF5 stores small attributes
// there), so the first occurrence of the value's bytes within 128 bytes after the name is it.
// Checks through HDF5 that exactly that attribute changed, by that bit.
void FlipAttrBit(const std::string& path, const std::string& attr, int bit) {
  int64_t value = 0;
  auto read = [&]() {
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t a = H5Aopen_by_name(f, "/state", attr.c_str(), H5P_DEFAULT, H5P_DEFAULT);
    int64_t v = 0;
    EXPECT_GE(H5Aread(a, H5T_NATIVE_INT64, &v), 0) << path << " " << attr;
    H5Aclose(a);
    H5Fclose(f);
    return v;
  };
  value = read();
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  const std::string name = attr + std::string(1, '\0');
  const size_t at = bytes.find(name);
  ASSERT_NE(at, std::string::npos) << attr << " not found in " << path;
  ASSERT_EQ(bytes.find(name, at + 1), std::string::npos) << attr << " found twice in " << path;
  const std::string pattern(reinterpret_cast<const char*>(&value), sizeof value);  // little endian
  const size_t v = bytes.find(pattern, at + name.size());
  ASSERT_TRUE(v != std::string::npos && v < at + name.size() + 128) << attr << " value not found";
  std::fstream io(path, std::ios::in | std::ios::out | std::ios::binary);
  io.seekp(static_cast<std::streamoff>(v + bit / 8));
  const char c = static_cast<char>(bytes[v + bit / 8] ^ (1 << (bit % 8)));
  io.write(&c, 1);
  io.close();
  ASSERT_EQ(read(), value ^ (int64_t{1} << bit)) << "the flip missed " << attr;
}

// Flips one bit in the middle of dataset `dataset`'s data (contiguous layout).
void FlipDatasetBit(const std::string& path, const std::string& dataset) {
  const std::streamoff at = MiddleOfDataset(path, dataset);
  std::fstream io(path, std::ios::in | std::ios::out | std::ios::binary);
  io.seekg(at);
  char c = 0;
  io.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  io.seekp(at);
  io.write(&c, 1);
}

// Issue 18, defects 1 and 2: damage outside the tensors (the /state attributes and RNG states,
// the file name, the `latest` pointer) is detected and named, loading falls back to the previous
// good checkpoint, and training continues from it bit-identically.
TEST_F(CheckpointTest, DamagedStateAndLatestFallBackWithAWarning) {
  auto& world = TestWorld().comm();
  const std::string good = Dir("good");
  std::map<std::string, at::Tensor> params2, params3;
  double loss3 = 0, loss4 = 0;
  {
    Job a(world, 1, 1, good);
    for (int s = 1; s <= 3; ++s) {
      const double loss = a.Step();
      if (s == 3) loss3 = loss;
      a.Save();
      if (s == 2) params2 = a.FullParams();
    }
    params3 = a.FullParams();
    loss4 = a.Step();
  }
  const std::string p3 = "step_00000003.h5";
  struct Case {
    std::string name;
    std::function<void(const std::string&)> damage;  // on rank 0, of a copy of `good`
    int64_t want_step;                               // where loading lands
    std::vector<std::string> want_warnings;          // substrings of rank 0's stderr
  };
  const std::vector<Case> cases = {
      {"loader cursor", [&](const std::string& d) { FlipAttrBit(d + "/" + p3, "loader_cursor", 1); },
       2, {p3 + " is unusable", "checksum mismatch in the training state"}},
      {"step", [&](const std::string& d) { FlipAttrBit(d + "/" + p3, "step", 0); },
       2, {p3 + " is unusable", "checksum mismatch in the training state"}},
      {"tokens seen", [&](const std::string& d) { FlipAttrBit(d + "/" + p3, "tokens_seen", 9); },
       2, {p3 + " is unusable", "checksum mismatch in the training state"}},
      {"rng", [&](const std::string& d) { FlipDatasetBit(d + "/" + p3, "/state/rng"); },
       2, {p3 + " is unusable", "checksum mismatch in the RNG states"}},
      {"renamed",
       [&](const std::string& d) {
         files::Rename(d + "/" + p3, d + "/step_00000004.h5");
         std::ofstream(d + "/latest") << "step_00000004.h5\n";
       },
       2, {"step_00000004.h5 is unusable", "file name says step 4 but the checkpoint holds step 3"}},
      {"latest missing",
       [&](const std::string& d) { std::ofstream(d + "/latest") << "step_00000007.h5\n"; },
       3, {"latest names step_00000007.h5, which does not exist", "falling back to the newest "
           "checkpoint file, " + p3}},
      {"latest garbage",
       [&](const std::string& d) { std::ofstream(d + "/latest") << "\x01\xfe" "garbage\n"; },
       3, {"latest names '??garbage', which is not a checkpoint file name"}},
      {"latest names a garbage file",
       [&](const std::string& d) {
         std::ofstream(d + "/step_00000007.h5") << "not an HDF5 file\n";
         std::ofstream(d + "/latest") << "step_00000007.h5\n";
       },
       3, {"step_00000007.h5 is unusable"}},
  };
  for (const auto& c : cases) {
    const std::string dir = Dir("case_" + std::to_string(&c - cases.data()));
    if (Root()) {
      files::CreateDirectories(dir);
      for (const auto& f : files::ListDir(good)) {
        files::CopyFile(files::Join(good, f), files::Join(dir, f), false);
      }
      c.damage(dir);
    }
    Barrier();
    Job b(world, 1, 1, dir);
    if (Root()) ::testing::internal::CaptureStderr();
    const auto meta = b.ckpt->LoadLatest();
    const std::string err = Root() ? ::testing::internal::GetCapturedStderr() : "";
    ASSERT_TRUE(meta.has_value()) << c.name;
    EXPECT_EQ(meta->state.step, c.want_step) << c.name;
    EXPECT_EQ(meta->state.loader.cursor, c.want_step * kGlobalBatch) << c.name;
    for (const auto& w : c.want_warnings) {
      if (!Root()) break;
      EXPECT_NE(err.find(w), std::string::npos) << c.name << ": no '" << w << "' in:\n" << err;
    }
    // Continues exactly as the undamaged run did.
    b.trainer->set_step(meta->state.step);
    ExpectEqualMaps(b.FullParams(), c.want_step == 2 ? params2 : params3, c.name + ": loaded");
    const double next = b.Step();
    EXPECT_EQ(next, c.want_step == 2 ? loss3 : loss4) << c.name << ": the next step's loss";
    if (c.want_step == 2) ExpectEqualMaps(b.FullParams(), params3, c.name + ": after a step");
    Barrier();
  }
}

// A checkpoint whose state checksum verifies but whose version is unknown is a newer format
// (ModelError, no fallback); one whose version is unknown and whose state does not verify is a
// damaged one.
TEST_F(CheckpointTest, FormatVersionDamageIsCorruption) {
  auto& world = TestWorld().comm();
  const std::string dir = Dir("ckpt");
  Job a(world, 1, 0, dir);
  a.Step();
  a.Save();
  Barrier();
  if (Root()) {
    const std::string p = dir + "/step_00000001.h5";
    FlipAttrBit(p, "format_version", 2);  // 2 -> 6
    try {
      ReadCheckpointMeta(p);
      ADD_FAILURE() << "a damaged format_version was accepted";
    } catch (const CorruptCheckpointError& e) {
      EXPECT_NE(std::string(e.what()).find("format_version 6"), std::string::npos) << e.what();
    }
  }
}

TEST_F(CheckpointTest, ArchitectureMismatchIsNotCorruption) {
  auto& world = TestWorld().comm();
  const std::string dir = Dir("ckpt");
  Job a(world, 1, 0, dir);
  a.Step();
  a.Save();
  Config other = TinyConfig(0, 1);
  other.model.arch.intermediate_size = 96;
  parallel::ProcessGrid grid(world, -1, 1);
  auto model = models::BuildLlama(models::LlamaConfig::FromInline(other.model), torch::kFloat, 1);
  Trainer t(TestWorld(), other, model, grid);
  CheckpointManager m(other, grid, t.data_parallel(), model->config(), dir);
  try {
    m.LoadLatest();
    ADD_FAILURE() << "no error";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("another architecture"), std::string::npos) << e.what();
  }
}

TEST_F(CheckpointTest, WriteErrorNamesThePathAndKeepsEarlierCheckpoints) {
  auto& world = TestWorld().comm();
  const std::string dir = Dir("ckpt");
  Job a(world, 1, 1, dir);
  a.Step();
  a.Save();
  a.Step();
  // A directory where the temporary file of step 2 should go: creating it fails.
  if (Root()) {
    files::CreateDirectories(dir + "/step_00000002.h5.tmp/blocker");
  }
  Barrier();
  try {
    a.Save();
    ADD_FAILURE() << "save into a blocked path did not throw";
  } catch (const IoError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("step_00000002.h5"), std::string::npos) << msg;
    EXPECT_NE(msg.find("intact"), std::string::npos) << msg;
  }
  Barrier();
  EXPECT_FALSE(files::Exists(dir + "/step_00000002.h5"));
  EXPECT_EQ(CheckpointCandidates(dir).size(), 1u);
  Job b(world, 1, 1, dir);
  auto meta = b.ckpt->LoadLatest();
  ASSERT_TRUE(meta.has_value());
  EXPECT_EQ(meta->state.step, 1);

  // The checkpoint directory itself is a file: the error names it.
  const std::string file_dir = Dir("not_a_dir");
  if (Root()) std::ofstream(file_dir) << "x";
  Barrier();
  Job c(world, 1, 0, file_dir);
  c.Step();
  try {
    c.Save();
    ADD_FAILURE() << "save into a file did not throw";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(file_dir), std::string::npos) << e.what();
  }
}

TEST_F(CheckpointTest, AsyncSaveWritesTheStateOfItsStepAndKeepsNewest) {
  auto& world = TestWorld().comm();
  const std::string dir = Dir("ckpt");
  Job a(world, 1, 2, dir, /*async=*/true);
  std::map<std::string, at::Tensor> at_step[5];
  for (int s = 1; s <= 4; ++s) {
    a.Step();
    at_step[s] = a.FullParams();
    a.Save();  // returns at once; the next Step changes the live tensors meanwhile
  }
  a.ckpt->Wait();
  ASSERT_EQ(a.ckpt->saves().size(), 4u);
  for (const auto& s : a.ckpt->saves()) EXPECT_TRUE(s.async);
  if (Root()) {
    // keep = 3: step 1 was pruned after step 4 completed.
    EXPECT_FALSE(files::Exists(dir + "/step_00000001.h5"));
    for (int s = 2; s <= 4; ++s) {
      const std::string p = fmt::format("{}/step_{:08d}.h5", dir, s);
      std::map<std::string, at::Tensor> file;
      for (auto& [n, t] : ReadCheckpointModel(p, ReadCheckpointMeta(p))) file[n] = t;
      ExpectEqualMaps(file, at_step[s], "async step " + std::to_string(s));
    }
    for (const auto& name : files::ListDir(dir)) {
      EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
    }
  }
}

TEST_F(CheckpointTest, ExportReimportIsBitIdentical) {
  auto& world = TestWorld().comm();
  const std::string dir = Dir("ckpt");
  Job a(world, 2, 1, dir);
  a.Step();
  a.Save();
  const auto params = a.FullParams();
  if (Root()) {
    const std::string p = dir + "/step_00000001.h5";
    const auto meta = ReadCheckpointMeta(p);
    auto cfg = models::LlamaConfig::FromJson(nlohmann::json::parse(meta.model_config_json), p);
    models::SaveHfOptions opt;
    models::WriteHfDir(ReadCheckpointModel(p, meta), cfg, Dir("hf"), opt);
    auto loaded = models::LoadHf(Dir("hf"), torch::kFloat);
    std::map<std::string, at::Tensor> re;
    for (const auto& q : loaded.model->named_parameters()) re[q.key()] = q.value().detach();
    ExpectEqualMaps(re, params, "export -> import");
  }
  // The collective reader (export under mpirun): each rank a slice, gathered on rank 0.
  const auto ck = ReadNewestCheckpointModel(world, dir, "--checkpoint");
  EXPECT_EQ(ck.meta.state.step, 1);
  if (Root()) {
    std::map<std::string, at::Tensor> got;
    for (const auto& [n, t] : ck.tensors) got[n] = t;
    ExpectEqualMaps(got, params, "collective read");
    auto cfg = models::LlamaConfig::FromJson(nlohmann::json::parse(ck.meta.model_config_json),
                                             ck.meta.path);
    models::WriteHfDir(ck.tensors, cfg, Dir("hf_collective"), {});
    auto loaded = models::LoadHf(Dir("hf_collective"), torch::kFloat);
    std::map<std::string, at::Tensor> re;
    for (const auto& q : loaded.model->named_parameters()) re[q.key()] = q.value().detach();
    ExpectEqualMaps(re, params, "collective export -> import");
    // What `ftune generate --model CKPT` runs: the model built from the checkpoint's tensors.
    const auto direct = ReadNewestCheckpointModel(dir, "--model");
    auto from_ck = models::ModelFromTensors(cfg, direct.tensors, torch::kFloat, "checkpoint");
    std::map<std::string, at::Tensor> gen;
    for (const auto& q : from_ck.model->named_parameters()) gen[q.key()] = q.value().detach();
    ExpectEqualMaps(gen, params, "checkpoint -> generate's model");
  } else {
    EXPECT_TRUE(ck.tensors.empty());
  }
}

TEST_F(CheckpointTest, CollectiveModelReadFallsBackOnEveryRank) {
  auto& world = TestWorld().comm();
  const std::string dir = Dir("ckpt");
  Job a(world, 1, 1, dir);
  std::map<std::string, at::Tensor> at_step1;
  for (int s = 1; s <= 2; ++s) {
    a.Step();
    a.Save();
    if (s == 1) at_step1 = a.FullParams();
  }
  Barrier();
  // The middle of a tensor of the newest checkpoint: bytes that only a rank > 0 reads.
  if (Root()) CorruptDataset(dir + "/step_00000002.h5", "/model/model.layers.0.mlp.up_proj.weight");
  Barrier();
  const auto ck = ReadNewestCheckpointModel(world, dir, "--checkpoint");
  EXPECT_EQ(ck.meta.state.step, 1);
  if (Root()) {
    std::map<std::string, at::Tensor> got;
    for (const auto& [n, t] : ck.tensors) got[n] = t;
    ExpectEqualMaps(got, at_step1, "collective fallback to step 1");
  }
  // Nothing usable left: every rank throws the same IoError.
  if (Root()) CorruptDataset(dir + "/step_00000001.h5", "/model/model.norm.weight");
  Barrier();
  try {
    ReadNewestCheckpointModel(world, dir, "--checkpoint");
    ADD_FAILURE() << "no usable checkpoint, but no error";
  } catch (const CorruptCheckpointError& e) {
    ADD_FAILURE() << "wrong error type: " << e.what();
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("none of its 2 checkpoint(s) is usable"),
              std::string::npos) << e.what();
  }
}

// Benchmark (not a test): FTUNE_CKPT_BENCH_MB=<approximate checkpoint size> writes and reads a
// checkpoint of a wider model, sync (checkpoint.direct_io off, then on) and async, and prints GB/s
// and the blocking time per save.
TEST_F(CheckpointTest, Benchmark) {
  const char* env = std::getenv("FTUNE_CKPT_BENCH_MB");
  if (!env) GTEST_SKIP() << "set FTUNE_CKPT_BENCH_MB to run";
  auto& world = TestWorld().comm();
  const double mb = std::atof(env);
  const char* bench_dir = std::getenv("FTUNE_CKPT_BENCH_DIR");
  const std::string dir = bench_dir ? bench_dir : Dir("bench");
  struct Mode {
    bool async, direct;
  };
  // FTUNE_CKPT_BENCH_MODES: which, in which order: b (sync, direct_io off), d (sync, direct_io
  // on), a (async, direct_io on); default "bda".
  const char* modes_env = std::getenv("FTUNE_CKPT_BENCH_MODES");
  std::vector<Mode> modes;
  for (const char c : std::string(modes_env ? modes_env : "bda")) {
    if (c == 'b' || c == 'd' || c == 'a') modes.push_back({c == 'a', c != 'b'});
  }
  for (const Mode mode : modes) {
    const bool async = mode.async;
    const int first_step = 10 * (2 * async + mode.direct);
    Config cfg = TinyConfig(1, 1);
    cfg.checkpoint.async = async;
    cfg.checkpoint.direct_io = mode.direct;
    cfg.checkpoint.keep = 1;
    cfg.parallel.bucket_mb = 25;
    // 12 bytes per parameter (master + 2 moments); layers of 16 h^2 parameters (attention 4 h^2,
    // MLP 3 * 4h * h), so that the file is about `mb` MB, the size bench_checkpoint.sh gives dd.
    const int64_t h = 512,
                  layers = std::max<int64_t>(1, std::lround(mb * 1e6 / 12 / (16.0 * h * h)));
    cfg.model.arch.hidden_size = h;
    cfg.model.arch.intermediate_size = 4 * h;
    cfg.model.arch.num_hidden_layers = layers;
    cfg.model.arch.num_attention_heads = 8;
    cfg.model.arch.num_key_value_heads = 8;
    parallel::ProcessGrid grid(world, -1, 1);
    auto model = models::BuildLlama(models::LlamaConfig::FromInline(cfg.model), torch::kFloat, 1);
    Trainer trainer(TestWorld(), cfg, model, grid);
    CheckpointManager m(cfg, grid, trainer.data_parallel(), model->config(), dir);
    for (int s = 1; s <= 3; ++s) {
      TrainState st;
      st.step = first_step + s;
      m.Save(st);
      // Stand-in for a training step that overlaps an async write.
      const char* gap = std::getenv("FTUNE_CKPT_BENCH_GAP_MS");
      std::this_thread::sleep_for(std::chrono::milliseconds(gap ? std::atoi(gap) : 300));
    }
    m.Wait();
    // FTUNE_CKPT_BENCH_DROP_CACHES=1 (root): read from the disk, not the page cache.
    if (std::getenv("FTUNE_CKPT_BENCH_DROP_CACHES") && Root()) {
      sync();
      std::ofstream("/proc/sys/vm/drop_caches") << "3\n";
    }
    world.Barrier()->Wait();
    const auto t0 = std::chrono::steady_clock::now();
    auto meta = m.LoadLatest();
    const double read_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (Root()) {
      for (const auto& s : m.saves()) {
        std::printf("BENCH async=%d direct_io=%d step=%lld bytes=%lld write_s=%.3f write_GBps=%.3f "
                    "blocking_s=%.4f (crc %.3f, data %.3f, close %.3f, raw %.3f [rank 0: %.0f MB "
                    "O_DIRECT, %.1f MB buffered], publish %.3f incl. fsync %.3f)\n",
                    async, mode.direct, static_cast<long long>(s.step),
                    static_cast<long long>(s.file_bytes),
                    s.write_s, s.file_bytes / 1e9 / s.write_s, s.blocking_s, s.crc_s, s.data_s,
                    s.close_s, s.raw_s, s.direct_bytes / 1e6, s.buffered_bytes / 1e6,
                    s.publish_s, s.fsync_s);
      }
      const auto bytes = files::FileSize(meta->path);
      const auto& l = m.last_load();
      std::printf("BENCH read cold bytes=%lld read_s=%.3f read_GBps=%.3f (incl. checksum; file "
                  "%.3f s = %.3f GB/s, of which crc %.3f; verify %.3f, params %.3f)\n",
                  static_cast<long long>(bytes), read_s, bytes / 1e9 / read_s,
                  l.read_s + l.verify_s, bytes / 1e9 / (l.read_s + l.verify_s), l.crc_s,
                  l.verify_s, l.params_s);
    }
    // Again, from the page cache.
    world.Barrier()->Wait();
    const auto t1 = std::chrono::steady_clock::now();
    meta = m.LoadLatest();
    const double warm_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    if (Root()) {
      const auto bytes = files::FileSize(meta->path);
      const auto& l = m.last_load();
      std::printf("BENCH read warm bytes=%lld read_s=%.3f read_GBps=%.3f (incl. checksum; file "
                  "%.3f s = %.3f GB/s, of which crc %.3f; verify %.3f, params %.3f)\n",
                  static_cast<long long>(bytes), warm_s, bytes / 1e9 / warm_s,
                  l.read_s + l.verify_s, bytes / 1e9 / (l.read_s + l.verify_s), l.crc_s,
                  l.verify_s, l.params_s);
    }
  }
}

}  // namespace
}  // namespace ftune::runtime
