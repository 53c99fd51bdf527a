// runtime/plan.h: parameter counts of real models, the model-state formulas per ZeRO stage, the
// layouts enumerated and the recommendation rule. (tests/mpi/plan_model_state_test.cpp checks the
// formulas against what DataParallel really allocates.)
#include "runtime/plan.h"

#include <gtest/gtest.h>

#include <map>
#include <tuple>

namespace ftune::runtime {
namespace {

models::LlamaConfig Llama3(int64_t hidden, int64_t ffn, int64_t layers, int64_t heads) {
  models::LlamaConfig c;
  c.vocab_size = 128256;
  c.hidden_size = hidden;
  c.intermediate_size = ffn;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = 8;
  c.head_dim = hidden / heads;
  c.max_position_embeddings = 8192;
  c.rope_theta = 500000;
  return c;
}

TEST(Plan, ParameterCountsOfLlama3Models) {
  // The published sizes (HF model cards: 8,030,261,248 and 70,553,706,496 parameters).
  EXPECT_EQ(ParamsPerTpRank(Llama3(4096, 14336, 32, 32), 1), 8030261248LL);
  EXPECT_EQ(ParamsPerTpRank(Llama3(8192, 28672, 80, 64), 1), 70553706496LL);
  // tp = 8: every matrix split, the norms (2 per layer + final, hidden each) replicated.
  const auto c = Llama3(4096, 14336, 32, 32);
  const int64_t norms = (2 * 32 + 1) * 4096;
  EXPECT_EQ(ParamsPerTpRank(c, 8), (8030261248LL - norms) / 8 + norms);
}

TEST(Plan, ModelStatePerZeroStage) {
  const auto c = Llama3(4096, 14336, 32, 32);
  const double p = 8030261248.0, n = 8;
  // bf16: 16 bytes/param before sharding; ZeRO-1 4 + 12/N, ZeRO-2 2 + 16/N, ZeRO-3 18/N.
  EXPECT_DOUBLE_EQ(PlanModelState(c, 2, 8, 1, 0).total(), 16 * p);
  EXPECT_DOUBLE_EQ(PlanModelState(c, 2, 8, 1, 1).total(), 4 * p + 12 * p / n);
  EXPECT_DOUBLE_EQ(PlanModelState(c, 2, 8, 1, 2).total(), 2 * p + 16 * p / n);
  EXPECT_DOUBLE_EQ(PlanModelState(c, 2, 8, 1, 3).total(), 18 * p / n);
  // fp32: 16, 8 + 8/N, 4 + 12/N, 16/N.
  EXPECT_DOUBLE_EQ(PlanModelState(c, 4, 8, 1, 0).total(), 16 * p);
  EXPECT_DOUBLE_EQ(PlanModelState(c, 4, 8, 1, 1).total(), 8 * p + 8 * p / n);
  EXPECT_DOUBLE_EQ(PlanModelState(c, 4, 8, 1, 2).total(), 4 * p + 12 * p / n);
  EXPECT_DOUBLE_EQ(PlanModelState(c, 4, 8, 1, 3).total(), 16 * p / n);
}

TEST(Plan, LayoutsAndRecommendation) {
  PlanInput in;
  in.model = Llama3(4096, 14336, 32, 32);
  in.seq_len = 4096;
  in.micro_batch = 2;
  in.nodes = 1;
  in.gpus_per_node = 8;
  in.gpu_mem_bytes = 80.0 * (1 << 30);
  const auto plans = PlanLayouts(in);
  // tp 1, 2, 4, 8 x zero 0-3 x none/selective/every_2/full x optimizer offload or not
  ASSERT_EQ(plans.size(), 4u * 4u * 4u * 2u);
  std::map<std::tuple<int64_t, int64_t, std::string>, const LayoutPlan*> by, offloaded;
  for (const auto& p : plans) {
    EXPECT_EQ(p.dp * p.tp, 8);
    EXPECT_NEAR(p.total, p.state.total() + p.peak.bytes + p.overhead, 1);
    EXPECT_GE(p.peak.bytes, p.acts.kept());
    (p.offload ? offloaded : by)[{p.tp, p.zero, p.checkpointing.Name()}] = &p;
  }
  // Offload moves the optimizer state (moments and master: 12 bytes per owned parameter in bf16)
  // to the host, which keeps 16 (with the fp32 gradient copy) plus the update's temporaries.
  for (const auto& [key, q] : offloaded) {
    const auto& p = *by.at(key);
    const double own = std::get<1>(key) == 0 ? double(p.params_per_gpu)
                                             : double(p.params_per_gpu) / p.dp;
    EXPECT_EQ(q->state.optimizer, 0.0);
    EXPECT_DOUBLE_EQ(p.state.optimizer, 12 * own);
    EXPECT_DOUBLE_EQ(q->state.host, 16 * own);
    EXPECT_GE(q->host, q->state.host);
    EXPECT_LT(q->total, p.total);
    EXPECT_EQ(p.host, 0.0);
  }
  // Each policy keeps less than the one before it, and costs more compute.
  for (const auto& p : plans) {
    const auto& none = *by.at({p.tp, p.zero, "none"});
    const auto& sel = *by.at({p.tp, p.zero, "selective"});
    const auto& every = *by.at({p.tp, p.zero, "every_2"});
    const auto& full = *by.at({p.tp, p.zero, "full"});
    EXPECT_LT(sel.acts.layers, none.acts.layers);
    EXPECT_LT(every.acts.layers, none.acts.layers);
    EXPECT_LT(full.acts.layers, std::min(sel.acts.layers, every.acts.layers));
    EXPECT_EQ(none.recompute, 0.0);
    EXPECT_GT(sel.recompute, 0.0);
    EXPECT_LT(sel.recompute, every.recompute);
    EXPECT_LT(every.recompute, full.recompute);
    // A full recompute repeats a forward of every layer: about a third of the step.
    EXPECT_NEAR(full.recompute, 1.0 / 3, 0.03);
  }
  // 16 bytes/param do not fit one 80 GiB GPU unsharded. Without recompute the activations of
  // seq 4096 x micro-batch 2 (59 GiB) fit no tp-1 layout; selective recompute (4 % more compute)
  // does at every ZeRO stage >= 1, and ZeRO-2 sends the fewest bytes of those.
  const int best = RecommendLayout(plans);
  ASSERT_GE(best, 0);
  const auto& rec = plans[best];
  EXPECT_TRUE(rec.headroom);
  EXPECT_FALSE(plans[0].fits);  // dp 8, tp 1, zero 0
  EXPECT_EQ(rec.tp, 1);
  EXPECT_EQ(rec.zero, 2);
  EXPECT_EQ(rec.checkpointing.Name(), "selective");
  for (int64_t zero = 0; zero <= 3; ++zero) EXPECT_FALSE(by.at({1, zero, "none"})->headroom);
  EXPECT_LT(rec.dp_comm_bytes, by.at({1, 1, "selective"})->dp_comm_bytes);
  EXPECT_LT(rec.dp_comm_bytes, by.at({1, 3, "selective"})->dp_comm_bytes);
  const std::string report = PlanReport(in, plans);
  EXPECT_NE(report.find("--set parallel.zero=2 --set train.activation_checkpointing=selective"),
            std::string::npos) << report;

  EXPECT_FALSE(rec.offload);  // offload is the last lever

  // One 80 GiB GPU: only an offloaded optimizer leaves room (the model state alone is 120 GiB).
  in.gpus_per_node = 1;
  const auto one = PlanLayouts(in);
  const int only = RecommendLayout(one);
  ASSERT_GE(only, 0);
  EXPECT_TRUE(one[only].offload);
  EXPECT_NEAR(one[only].state.host, 16 * 8030261248.0, 1e6);
  EXPECT_NE(PlanReport(in, one).find("--set parallel.offload=optimizer"), std::string::npos);
  for (const auto& p : one) {
    if (!p.offload) EXPECT_FALSE(p.headroom) << p.zero << " " << p.checkpointing.Name();
  }
  in.gpus_per_node = 8;

  // tp must divide the heads: 6 GPUs per node allow tp 1 and 2 only (32 heads, 8 kv heads).
  in.gpus_per_node = 6;
  for (const auto& p : PlanLayouts(in)) EXPECT_TRUE(p.tp == 1 || p.tp == 2) << p.tp;

  // Nothing fits on a 4 GiB GPU: no recommendation, and the report says what to change.
  in.gpus_per_node = 1;
  in.gpu_mem_bytes = 4.0 * (1 << 30);
  const auto none = PlanLayouts(in);
  EXPECT_EQ(RecommendLayout(none), -1);
  EXPECT_NE(PlanReport(in, none).find("no layout fits"), std::string::npos);
}

TEST(Plan, ConfigsCarryTheLayoutThePlannerRecommends) {
  // configs/llama3_*.yaml: their parallel.* and train.activation_checkpointing are the plan's
  // recommendation for the GPUs their header names, so the plan describes the run they do.
  struct Case {
    std::string file;
    int64_t nodes, gpus;
  };
  for (const Case& c : {Case{"llama3_8b.yaml", 1, 8}, Case{"llama3_70b.yaml", 8, 8}}) {
    ConfigCheck check;
    check.layout = false;
    const Config cfg = LoadConfig(std::string(FTUNE_SOURCE_DIR) + "/configs/" + c.file, {}, check);
    const PlanInput in = PlanInputFor(cfg, models::LlamaConfig::FromInline(cfg.model), c.nodes,
                                      c.gpus, 80.0 * (1 << 30));
    const auto plans = PlanLayouts(in);
    const int best = RecommendLayout(plans);
    ASSERT_GE(best, 0) << c.file;
    const LayoutPlan own = PlanConfigLayout(in, cfg);
    const auto& p = plans[best];
    EXPECT_EQ(std::make_tuple(own.dp, own.tp, own.zero, own.checkpointing.Name()),
              std::make_tuple(p.dp, p.tp, p.zero, p.checkpointing.Name()))
        << c.file << ": the config's layout is not the recommended one\n"
        << PlanReport(in, plans, &own);
    EXPECT_TRUE(own.headroom) << c.file;
  }
}

TEST(Plan, ConfigLayoutErrorsNameTheKey) {
  ConfigCheck any_world;
  any_world.layout = false;
  Config cfg = LoadConfig("", {"parallel.tp=3", "model.arch.num_hidden_layers=2"}, any_world);
  const PlanInput in = PlanInputFor(cfg, models::LlamaConfig::FromInline(cfg.model), 1, 8, 80e9);
  try {
    PlanConfigLayout(in, cfg);
    ADD_FAILURE() << "tp 3 on 8 GPUs was planned";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.tp 3 does not fill the 8 GPU(s)"),
              std::string::npos) << e.what();
  }
  cfg = LoadConfig("", {"train.activation_checkpointing=every_n",
                        "train.activation_checkpointing_every=4",
                        "model.arch.num_hidden_layers=2"}, any_world);
  try {
    PlanConfigLayout(PlanInputFor(cfg, models::LlamaConfig::FromInline(cfg.model), 1, 8, 80e9),
                     cfg);
    ADD_FAILURE() << "every_4 on 2 layers was planned";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("train.activation_checkpointing_every: 4"),
              std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ftune::runtime
