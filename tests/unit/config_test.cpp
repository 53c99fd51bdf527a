#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "parallel/files.h"
#include "runtime/config.h"

namespace ftune::runtime {
namespace {

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = files::Join(files::TempDir(),
                       "ftune_config_test_" + std::to_string(::getpid()) + "_" +
                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    files::CreateDirectories(dir_);
  }
  void TearDown() override { files::RemoveAll(dir_); }

  std::string Write(const std::string& text) {
    auto p = files::Join(dir_, "c.yaml");
    std::ofstream(p) << text;
    return p;
  }

  // Loads and returns the ConfigError message ("" if none was thrown).
  std::string ErrorOf(const std::string& path, std::vector<std::string> ov = {},
                      ConfigCheck check = {}) {
    try {
      LoadConfig(path, ov, check);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  }

  std::string dir_;
};

TEST_F(ConfigTest, DefaultsWithoutFile) {
  Config c = LoadConfig("", {}, {});
  EXPECT_EQ(c.train.micro_batch, 4);
  EXPECT_EQ(c.parallel.tp, 1);
  EXPECT_EQ(c.data.split.seed, 1234);
  EXPECT_EQ(c.model.dtype, "fp32");
}

TEST_F(ConfigTest, YamlThenOverridesWin) {
  auto p = Write("train:\n  micro_batch: 8\n  steps: 10\noptim:\n  lr: 0.001\n"
                 "data:\n  inputs: [a.jsonl, b.jsonl]\n  split:\n    test_ratio: 0.2\n");
  Config c = LoadConfig(p, {"train.micro_batch=16", "data.split.seed=7", "model.dtype=bf16"},
                        {1, true});
  EXPECT_EQ(c.train.micro_batch, 16);  // CLI > YAML
  EXPECT_EQ(c.train.steps, 10);        // YAML > default
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.001);
  EXPECT_EQ(c.data.inputs, (std::vector<std::string>{"a.jsonl", "b.jsonl"}));
  EXPECT_DOUBLE_EQ(c.data.split.test_ratio, 0.2);
  EXPECT_EQ(c.data.split.seed, 7);
  EXPECT_EQ(c.model.dtype, "bf16");
  EXPECT_EQ(c.train.grad_accum, 1);  // default
}

TEST_F(ConfigTest, ScalarIsAOneElementList) {
  auto p = Write("data:\n  inputs: only.jsonl\n");
  EXPECT_EQ(LoadConfig(p, {}, {}).data.inputs, std::vector<std::string>{"only.jsonl"});
}

TEST_F(ConfigTest, UnknownKeyNamesKeyFileLineAndClosest) {
  auto p = Write("train:\n  micro_batch: 2\n  micro_bach: 3\n");
  auto e = ErrorOf(p);
  EXPECT_NE(e.find(p + ":3"), std::string::npos) << e;
  EXPECT_NE(e.find("train.micro_bach"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown key"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'train.micro_batch'"), std::string::npos) << e;
}

TEST_F(ConfigTest, UnknownKeyInWrongSectionSuggestsTheRightOne) {
  auto p = Write("train:\n  lr: 0.1\n");
  auto e = ErrorOf(p);
  EXPECT_NE(e.find("did you mean 'optim.lr'"), std::string::npos) << e;
}

// A key or section written twice is an error naming both lines (yaml-cpp itself keeps both and
// lookups see the first: `steps: 4, steps: 6` used to train 4 steps, a second optim: was ignored).
TEST_F(ConfigTest, DuplicateKeysAndSectionsNameBothLines) {
  auto p = Write("train:\n  steps: 4\n  steps: 6\n");
  auto e = ErrorOf(p, {}, {1, true});
  EXPECT_NE(e.find(p + ":3: train.steps: written twice (first at " + p + ":2)"), std::string::npos)
      << e;
  p = Write("optim:\n  lr: 0.1\ntrain:\n  steps: 4\noptim:\n  lr: 0.2\n");
  e = ErrorOf(p);
  EXPECT_NE(e.find(p + ":5: optim: written twice (first at " + p + ":1)"), std::string::npos) << e;
  p = Write("train: {steps: 4, steps: 6}\n");
  e = ErrorOf(p);
  EXPECT_NE(e.find("train.steps: written twice"), std::string::npos) << e;
  p = Write("data:\n  split:\n    seed: 1\n    seed: 2\n");
  e = ErrorOf(p);
  EXPECT_NE(e.find(p + ":4: data.split.seed: written twice"), std::string::npos) << e;
  // The same leaf name in two sections is not a duplicate.
  EXPECT_EQ(ErrorOf(Write("eval:\n  every: 5\nlog:\n  every: 5\n")), "");
}

// Users arrive with HF Trainer / axolotl / torchtune names: each gets ftune's key.
TEST_F(ConfigTest, NamesFromOtherFrameworksGetFtunesKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"train:\n  learning_rate: 0.1\n", "did you mean 'optim.lr'? ('learning_rate' is the name "
                                          "in HF Trainer, axolotl)"},
      {"num_train_epochs: 3\n", "did you mean 'train.epochs'?"},
      {"train:\n  max_steps: 3\n", "did you mean 'train.steps'?"},
      {"train:\n  per_device_train_batch_size: 3\n", "did you mean 'train.micro_batch'?"},
      {"train:\n  gradient_accumulation_steps: 3\n", "did you mean 'train.grad_accum'?"},
      {"optim:\n  warmup_ratio: 0.1\n", "did you mean 'optim.warmup_steps (in steps"},
      {"optim:\n  lr_scheduler_type: cosine\n", "did you mean 'optim.schedule'?"},
      {"bf16: true\n", "did you mean 'model.dtype: bf16'?"},
      {"train:\n  gradient_checkpointing: true\n",
       "did you mean 'train.activation_checkpointing'?"},
      {"save_steps: 10\n", "did you mean 'checkpoint.every'?"},
      {"eval_steps: 10\n", "did you mean 'eval.every'?"},
      {"output_dir: out\n", "did you mean 'run.output_dir'?"},
      {"sequence_len: 512\n", "did you mean 'data.max_seq_len'?"},
      {"micro_batch_size: 2\n", "did you mean 'train.micro_batch'?"},
  };
  for (const auto& [yaml, want] : cases) {
    auto e = ErrorOf(Write(yaml));
    EXPECT_NE(e.find(want), std::string::npos) << yaml << " -> " << e;
  }
  // A name ftune has in another section still gets that section's key.
  auto e = ErrorOf(Write("train:\n  weight_decay: 0.1\n"));
  EXPECT_NE(e.find("did you mean 'optim.weight_decay'?"), std::string::npos) << e;
  e = ErrorOf("", {"train.learning_rate=0.1"});
  EXPECT_NE(e.find("--set train.learning_rate=0.1: train.learning_rate: unknown key; did you "
                   "mean 'optim.lr'?"),
            std::string::npos)
      << e;
}

TEST_F(ConfigTest, UnknownSection) {
  auto p = Write("trian:\n  steps: 3\n");
  auto e = ErrorOf(p);
  EXPECT_NE(e.find(p + ":1"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'train'"), std::string::npos) << e;
}

TEST_F(ConfigTest, WrongTypeNamesExpectedType) {
  auto p = Write("run:\n  seed: 1\ntrain:\n  micro_batch: four\n");
  auto e = ErrorOf(p);
  EXPECT_NE(e.find(p + ":4"), std::string::npos) << e;
  EXPECT_NE(e.find("train.micro_batch"), std::string::npos) << e;
  EXPECT_NE(e.find("expected an integer"), std::string::npos) << e;
  EXPECT_NE(e.find("four"), std::string::npos) << e;

  auto p2 = Write("checkpoint:\n  async: maybe\n");
  EXPECT_NE(ErrorOf(p2).find("expected a boolean"), std::string::npos);
  auto p3 = Write("train:\n  micro_batch: 2.5\n");
  EXPECT_NE(ErrorOf(p3).find("expected an integer"), std::string::npos);
  auto p4 = Write("train: 5\n");
  EXPECT_NE(ErrorOf(p4).find("expected a section"), std::string::npos);
  auto p5 = Write("optim:\n  lr: [1, 2]\n");
  EXPECT_NE(ErrorOf(p5).find("expected a finite number"), std::string::npos);
}

TEST_F(ConfigTest, ActivationCheckpointingPolicies) {
  using Policy = ActivationCheckpointing::Policy;
  // The policies, and the boolean's old values (which checkpoints' recorded configs still hold).
  const std::vector<std::tuple<std::string, std::string, Policy>> ok = {
      {"train:\n  activation_checkpointing: none\n", "none", Policy::kNone},
      {"train:\n  activation_checkpointing: full\n", "full", Policy::kFull},
      {"train:\n  activation_checkpointing: selective\n", "selective", Policy::kSelective},
      {"train:\n  activation_checkpointing: every_n\n  activation_checkpointing_every: 3\n",
       "every_3", Policy::kEveryN},
      {"train:\n  activation_checkpointing: true\n", "full", Policy::kFull},
      {"train:\n  activation_checkpointing: false\n", "none", Policy::kNone},
      {"train:\n  activation_checkpointing: yes\n", "full", Policy::kFull},
      {"", "none", Policy::kNone},
  };
  for (const auto& [yaml, name, policy] : ok) {
    const auto ac = LoadConfig(yaml.empty() ? "" : Write(yaml), {}, {}).train.Checkpointing();
    EXPECT_EQ(ac.Name(), name) << yaml;
    EXPECT_EQ(ac.policy(), policy) << yaml;
  }
  // A resolved config written and read back keeps the policy.
  auto cfg = LoadConfig("", {"train.activation_checkpointing=every_n",
                             "train.activation_checkpointing_every=2"}, {});
  EXPECT_EQ(LoadConfigText(ConfigToYaml(cfg), "resolved", {}).train.Checkpointing().Name(),
            "every_2");

  // Which layers recompute what: every_n recomputes layers n-1, 2n-1, ...
  const auto every2 = ActivationCheckpointing::Parse("every_n", 2);
  EXPECT_EQ(every2.ForLayer(0), LayerRecompute::kNone);
  EXPECT_EQ(every2.ForLayer(1), LayerRecompute::kFull);
  EXPECT_EQ(every2.ForLayer(3), LayerRecompute::kFull);
  EXPECT_EQ(every2.RecomputedLayers(5), 2);
  EXPECT_EQ(ActivationCheckpointing::Parse("selective", 0).ForLayer(7), LayerRecompute::kSelective);
  EXPECT_EQ(ActivationCheckpointing::Parse("full", 0).RecomputedLayers(4), 4);
  EXPECT_EQ(ActivationCheckpointing::Parse("none", 0).RecomputedLayers(4), 0);
  EXPECT_EQ(every2.Settings(),
            "train.activation_checkpointing=every_n train.activation_checkpointing_every=2");

  // Bad settings name the key, the file and line, and the fix.
  auto p = Write("run:\n  seed: 1\ntrain:\n  activation_checkpointing: sometimes\n");
  auto e = ErrorOf(p);
  EXPECT_NE(e.find(p + ":4: train.activation_checkpointing: 'sometimes' is not a policy: use "
                       "none, full, every_n"),
            std::string::npos)
      << e;
  e = ErrorOf(Write("train:\n  activation_checkpointing: every_n\n"));
  EXPECT_NE(e.find("train.activation_checkpointing_every: 0: every_n needs n >= 1"),
            std::string::npos)
      << e;
  e = ErrorOf("",
              {"train.activation_checkpointing=full", "train.activation_checkpointing_every=2"});
  EXPECT_NE(e.find("train.activation_checkpointing_every: 2 is set, but only the every_n policy "
                   "uses it"),
            std::string::npos)
      << e;
  // A policy the model cannot run: every_n past the last layer recomputes nothing.
  try {
    ActivationCheckpointing::Parse("every_n", 5).CheckLayers(4);
    ADD_FAILURE() << "every_5 on 4 layers was accepted";
  } catch (const ConfigError& err) {
    EXPECT_NE(std::string(err.what()).find("train.activation_checkpointing_every: 5 is more than "
                                           "the model's 4 decoder layers"),
              std::string::npos)
        << err.what();
  }
}

TEST_F(ConfigTest, OutOfRangeNamesRangeAndLine) {
  auto p = Write("optim:\n  lr: 0.1\n  beta2: 1.5\n");
  auto e = ErrorOf(p);
  EXPECT_NE(e.find(p + ":3"), std::string::npos) << e;
  EXPECT_NE(e.find("optim.beta2"), std::string::npos) << e;
  EXPECT_NE(e.find("out of range"), std::string::npos) << e;

  auto p2 = Write("optim:\n  schedule: exponential\n");
  auto e2 = ErrorOf(p2);
  EXPECT_NE(e2.find("optim.schedule"), std::string::npos) << e2;
  EXPECT_NE(e2.find("cosine, linear, constant"), std::string::npos) << e2;
}

TEST_F(ConfigTest, MissingFileAndBadYaml) {
  auto e = ErrorOf(files::Join(dir_, "nope.yaml"));
  EXPECT_NE(e.find("nope.yaml"), std::string::npos) << e;
  EXPECT_NE(e.find("cannot open"), std::string::npos) << e;

  auto p = Write("train:\n  steps: 3\n  micro_batch: [1, 2\n");
  auto e2 = ErrorOf(p);
  EXPECT_NE(e2.find(p + ":"), std::string::npos) << e2;
  EXPECT_NE(e2.find("invalid YAML"), std::string::npos) << e2;

  auto p3 = Write("- a\n- b\n");
  EXPECT_NE(ErrorOf(p3).find("top level must be a mapping"), std::string::npos);
}

TEST_F(ConfigTest, UnreadableFile) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads files regardless of permissions";
  auto p = Write("train:\n  steps: 1\n");
  ASSERT_EQ(::chmod(p.c_str(), 0), 0);
  EXPECT_NE(ErrorOf(p).find("cannot open"), std::string::npos);
}

TEST_F(ConfigTest, DirectoryIsNotAConfig) {
  auto e = ErrorOf(dir_);
  EXPECT_NE(e.find(dir_), std::string::npos) << e;
}

TEST_F(ConfigTest, LayoutMustMatchWorldSize) {
  auto p = Write("parallel:\n  dp: 2\n  tp: 2\n");
  auto e = ErrorOf(p, {}, {2, false});
  EXPECT_NE(e.find("parallel.dp"), std::string::npos) << e;
  EXPECT_NE(e.find("parallel.tp"), std::string::npos) << e;
  EXPECT_NE(e.find("world size 2"), std::string::npos) << e;
  EXPECT_EQ(ErrorOf(p, {}, {4, false}), "");
  // dp = -1 derives dp from the world size.
  EXPECT_EQ(ErrorOf("", {"parallel.tp=2"}, {4, false}), "");
  EXPECT_NE(ErrorOf("", {"parallel.tp=2"}, {3, false}).find("world size 3"), std::string::npos);
}

// .nan passed `epochs == 0 || epochs < -1`, and ConfigToYaml wrote "nan", which did not load
// again (found with fuzz_config: the written config must load back).
TEST_F(ConfigTest, NonFiniteNumbersAreErrors) {
  auto p = Write("train:\n  epochs: .nan\n");
  auto e = ErrorOf(p);
  EXPECT_NE(e.find(p + ":2"), std::string::npos) << e;
  EXPECT_NE(e.find("train.epochs: expected a finite number, got '.nan'"), std::string::npos) << e;
  e = ErrorOf("", {"model.arch.rope_theta=-.inf"});
  EXPECT_NE(e.find("model.arch.rope_theta: expected a finite number"), std::string::npos) << e;
}

// dp * tp overflowed int64 (undefined; in practice 2^62 + 1 times 4 wrapped to 4, a layout
// that "fit" 4 ranks; found with fuzz_config under UBSan).
TEST_F(ConfigTest, HugeDpDoesNotFitTheWorld) {
  auto e = ErrorOf("", {"parallel.dp=4611686018427387905", "parallel.tp=4"}, {4, false});
  EXPECT_NE(e.find("parallel.dp * parallel.cp * parallel.tp = 4611686018427387905 * 1 * 4 does "
                   "not equal the world size 4"),
            std::string::npos)
      << e;
}

TEST_F(ConfigTest, ContextParallelLayoutIsChecked) {
  // dp * cp * tp must be the world; rows must cut into 2 * cp chunks; packed rows are refused.
  auto e = ErrorOf("", {"parallel.cp=2", "parallel.tp=2", "parallel.dp=2"}, {4, false});
  EXPECT_NE(e.find("parallel.dp * parallel.cp * parallel.tp = 2 * 2 * 2 does not equal the world "
                   "size 4"), std::string::npos) << e;
  e = ErrorOf("", {"parallel.cp=4", "data.max_seq_len=1001", "data.packing=false"}, {4, false});
  EXPECT_NE(e.find("data.max_seq_len 1001 is not divisible by 2 * parallel.cp = 8"),
            std::string::npos) << e;
  EXPECT_NE(e.find("set data.max_seq_len to 1008"), std::string::npos) << e;
  e = ErrorOf("", {"parallel.cp=2", "data.max_seq_len=1024", "data.packing=true"}, {2, false});
  EXPECT_NE(e.find("data.packing with parallel.cp > 1 is not supported"), std::string::npos) << e;
  e = ErrorOf("", {"parallel.cp=0"}, {2, false});
  EXPECT_NE(e.find("parallel.cp"), std::string::npos) << e;
}

TEST_F(ConfigTest, TpMustDivideTheModel) {
  auto e = ErrorOf("", {"parallel.tp=3"}, {3, false});
  EXPECT_NE(e.find("parallel.tp = 3"), std::string::npos) << e;
  EXPECT_NE(e.find("num_attention_heads"), std::string::npos) << e;
}

TEST_F(ConfigTest, StepsXorEpochsForTraining) {
  EXPECT_NE(ErrorOf("", {}, {1, true}).find("exactly one of train.steps"), std::string::npos);
  EXPECT_NE(ErrorOf("", {"train.steps=3", "train.epochs=1"}, {1, true}).find("exactly one"),
            std::string::npos);
  EXPECT_EQ(ErrorOf("", {"train.epochs=0.5"}, {1, true}), "");
}

TEST_F(ConfigTest, OverrideErrors) {
  auto e = ErrorOf("", {"train.micro_bach=3"});
  EXPECT_NE(e.find("--set train.micro_bach=3"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'train.micro_batch'"), std::string::npos) << e;
  EXPECT_NE(ErrorOf("", {"train.steps"}).find("expected key.sub=value"), std::string::npos);
  auto e2 = ErrorOf("", {"train.steps=abc"});
  EXPECT_NE(e2.find("--set train.steps=abc"), std::string::npos) << e2;
  EXPECT_NE(e2.find("expected an integer"), std::string::npos) << e2;
}

TEST_F(ConfigTest, YamlRoundTripAndTable) {
  Config c = LoadConfig("", {"optim.lr=3e-4", "data.inputs=[x.jsonl]", "run.name=\"a b: c\"",
                             "model.arch.rope_theta=500000.5"},
                        {});
  auto p = Write(ConfigToYaml(c));
  Config d = LoadConfig(p, {}, {});
  EXPECT_EQ(ConfigToYaml(c), ConfigToYaml(d));
  EXPECT_DOUBLE_EQ(d.optim.lr, 3e-4);
  EXPECT_EQ(d.run.name, "a b: c");
  EXPECT_DOUBLE_EQ(d.model.arch.rope_theta, 500000.5);
  auto table = ConfigTable(c);
  EXPECT_NE(table.find("optim.lr"), std::string::npos);
  EXPECT_NE(table.find("parameter"), std::string::npos);
  // Only what differs from the defaults: the four keys set above.
  EXPECT_EQ(table.find("optim.weight_decay"), std::string::npos) << table;
  EXPECT_EQ(table.find("train.micro_batch"), std::string::npos) << table;
  EXPECT_NE(table.find("(4 of "), std::string::npos) << table;
  EXPECT_NE(ConfigTable(Config{}).find("(0 of "), std::string::npos);
}

}  // namespace
}  // namespace ftune::runtime
