// runtime/plan.h: parameter counts of real models, the model-state formulas per ZeRO stage, the
// layouts enumerated and the recommendation rule. (tests/mpi/plan_model_state_test.cpp checks the
// formulas against what DataParallel really allocates.)
#include "runtime/plan.h"

#include <gtest/gtest.h>

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
  ASSERT_EQ(plans.size(), 4u * 4u * 2u);  // tp 1, 2, 4, 8 x zero 0-3 x checkpointing off/on
  for (const auto& p : plans) {
    EXPECT_EQ(p.dp * p.tp, 8);
    EXPECT_NEAR(p.total, p.state.total() + p.transient + p.activations + p.logits + p.overhead, 1);
    if (p.activation_checkpointing) continue;
    // Checkpointing keeps less: compare with the same layout with it on.
    for (const auto& q : plans) {
      if (q.dp == p.dp && q.zero == p.zero && q.activation_checkpointing) {
        EXPECT_LT(q.activations, p.activations);
      }
    }
  }
  // 16 bytes/param do not fit one 80 GiB GPU unsharded; ZeRO-3 over 8 does.
  const int best = RecommendLayout(plans);
  ASSERT_GE(best, 0);
  EXPECT_TRUE(plans[best].headroom);
  EXPECT_FALSE(plans[0].fits);  // dp 8, tp 1, zero 0
  EXPECT_FALSE(plans[best].activation_checkpointing);
  EXPECT_EQ(plans[best].tp, 1);
  EXPECT_EQ(plans[best].zero, 3);

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

}  // namespace
}  // namespace ftune::runtime
