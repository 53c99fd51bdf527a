// Generation: KV cache vs full recompute, batching with left padding, sampling, EOS.
#include "models/generate.h"

#include <gtest/gtest.h>

#include "models/llama.h"
#include "parallel/error.h"

using ftune::models::GenerateOptions;
using ftune::models::LlamaConfig;
using ftune::models::LlamaModel;

namespace {

std::shared_ptr<LlamaModel> TinyModel(bool tied = false) {
  ftune::models::ModelConfig mc;
  mc.arch.vocab_size = 48;
  mc.arch.hidden_size = 32;
  mc.arch.intermediate_size = 48;
  mc.arch.num_hidden_layers = 2;
  mc.arch.num_attention_heads = 4;
  mc.arch.num_key_value_heads = 2;
  mc.arch.tie_word_embeddings = tied;
  auto cfg = LlamaConfig::FromInline(mc);
  cfg.initializer_range = 0.3;  // peaked distributions: greedy choices far from ties
  cfg.rope_scaling.rope_type = "llama3";
  cfg.rope_scaling.original_max_position_embeddings = 64;
  return ftune::models::BuildLlama(cfg, torch::kFloat, 21);
}

// Greedy continuation by re-running the whole sequence every step (no cache).
std::vector<int32_t> GreedyNoCache(LlamaModel& m, std::vector<int32_t> seq, int64_t n) {
  torch::NoGradGuard ng;
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i) {
    auto t = torch::tensor(std::vector<int64_t>(seq.begin(), seq.end())).unsqueeze(0);
    auto logits = m.Logits(m.ForwardHidden(t)).select(1, -1);
    const int32_t next = static_cast<int32_t>(logits.argmax(-1).item<int64_t>());
    out.push_back(next);
    seq.push_back(next);
  }
  return out;
}

const std::vector<std::vector<int32_t>> kPrompts = {
    {5, 9, 13, 2, 40, 7}, {11}, {3, 3, 17, 29}, {44, 1, 30, 8, 8, 21, 6, 12, 19}};

}  // namespace

TEST(Generate, GreedyWithCacheEqualsFullRecompute) {
  for (bool tied : {false, true}) {
    auto m = TinyModel(tied);
    GenerateOptions opt;
    opt.max_new_tokens = 12;
    for (const auto& p : kPrompts) {
      auto got = ftune::models::Generate(*m, {p}, opt);
      ASSERT_EQ(got.size(), 1u);
      EXPECT_EQ(got[0], GreedyNoCache(*m, p, 12)) << "tied " << tied << " prompt len " << p.size();
    }
  }
}

TEST(Generate, BatchedEqualsOneByOne) {
  auto m = TinyModel();
  GenerateOptions opt;
  opt.max_new_tokens = 10;
  auto batched = ftune::models::Generate(*m, kPrompts, opt);
  ASSERT_EQ(batched.size(), kPrompts.size());
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    EXPECT_EQ(batched[i], ftune::models::Generate(*m, {kPrompts[i]}, opt)[0]) << i;
    EXPECT_EQ(batched[i].size(), 10u);
  }
}

TEST(Generate, SamplingIsDeterministicGivenSeed) {
  auto m = TinyModel();
  GenerateOptions opt;
  opt.max_new_tokens = 16;
  opt.temperature = 1.5;
  opt.top_k = 20;
  opt.top_p = 0.95;
  opt.seed = 99;
  auto a = ftune::models::Generate(*m, kPrompts, opt);
  auto b = ftune::models::Generate(*m, kPrompts, opt);
  EXPECT_EQ(a, b);
  opt.seed = 100;
  auto c = ftune::models::Generate(*m, kPrompts, opt);
  EXPECT_NE(a, c);
  auto greedy = ftune::models::Generate(*m, kPrompts, GenerateOptions{16});
  EXPECT_NE(a, greedy);
}

TEST(Generate, VocabLimitKeepsIdsTheTokenizerCanDecode) {
  // A model whose vocabulary is padded past its tokenizer's: with a limit, sampling at a high
  // temperature never emits an id >= the limit; without one it does (so the check can fail).
  auto m = TinyModel();
  GenerateOptions opt;
  opt.max_new_tokens = 48;
  opt.temperature = 5.0;
  opt.seed = 7;
  auto max_id = [](const std::vector<std::vector<int32_t>>& outs) {
    int32_t hi = -1;
    for (const auto& o : outs) for (int32_t id : o) hi = std::max(hi, id);
    return hi;
  };
  EXPECT_GE(max_id(ftune::models::Generate(*m, kPrompts, opt)), 12);
  opt.vocab_limit = 12;
  EXPECT_LT(max_id(ftune::models::Generate(*m, kPrompts, opt)), 12);
}

TEST(Generate, TopKOneAndTinyTopPAreGreedy) {
  auto m = TinyModel();
  GenerateOptions greedy;
  greedy.max_new_tokens = 8;
  auto want = ftune::models::Generate(*m, kPrompts, greedy);
  GenerateOptions k1 = greedy;
  k1.temperature = 1.0;
  k1.top_k = 1;
  EXPECT_EQ(ftune::models::Generate(*m, kPrompts, k1), want);
  GenerateOptions p0 = greedy;
  p0.temperature = 1.0;
  p0.top_p = 1e-6;
  EXPECT_EQ(ftune::models::Generate(*m, kPrompts, p0), want);
}

TEST(Generate, SampleNextRespectsTopKAndTopP) {
  auto gen = at::detail::createCPUGenerator(1);
  auto logits = torch::tensor({{0.0f, 1.0f, 2.0f, 3.0f, 4.0f}}).repeat({2000, 1});
  GenerateOptions opt;
  opt.temperature = 1.0;
  opt.top_k = 2;
  auto s = ftune::models::SampleNext(logits, opt, gen);
  EXPECT_TRUE((s >= 3).all().item<bool>());
  EXPECT_TRUE((s == 3).any().item<bool>());
  opt.top_k = 0;
  opt.top_p = 0.8;  // softmax: .64, .24, ... -> {4, 3} reach 0.8
  s = ftune::models::SampleNext(logits, opt, gen);
  EXPECT_TRUE((s >= 3).all().item<bool>());
}

TEST(Generate, StopsAtEos) {
  auto m = TinyModel();
  GenerateOptions opt;
  opt.max_new_tokens = 12;
  auto free_run = ftune::models::Generate(*m, kPrompts, opt);
  // Make the 3rd token of prompt 0's continuation an EOS id, beside a second EOS id.
  const int32_t eos = free_run[0][2];
  const int32_t eos2 = free_run[1][5];
  opt.eos_ids = {eos2, eos};
  auto stopped = ftune::models::Generate(*m, kPrompts, opt);
  // Each sequence stops at its first EOS (of either id), which it includes.
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    auto it = std::find_if(free_run[i].begin(), free_run[i].end(),
                           [&](int32_t t) { return t == eos || t == eos2; });
    std::vector<int32_t> want(free_run[i].begin(), it == free_run[i].end() ? it : it + 1);
    EXPECT_EQ(stopped[i], want) << i;
  }
  EXPECT_LE(stopped[0].size(), 3u);
  EXPECT_LE(stopped[1].size(), 6u);
  EXPECT_TRUE(stopped[0].back() == eos || stopped[0].back() == eos2);
}

TEST(Generate, RejectsBadInput) {
  auto m = TinyModel();
  GenerateOptions opt;
  EXPECT_THROW(ftune::models::Generate(*m, {{}}, opt), ftune::ModelError);
  EXPECT_THROW(ftune::models::Generate(*m, {{1, 480}}, opt), ftune::ModelError);
  opt.max_new_tokens = 0;
  EXPECT_EQ(ftune::models::Generate(*m, {{1, 2}}, opt), std::vector<std::vector<int32_t>>{{}});
}

TEST(Generate, CacheOverflowIsAnError) {
  auto m = TinyModel();
  auto cache = ftune::models::KVCache::Create(*m, 1, 4);
  ftune::models::ForwardOptions fo;
  fo.cache = &cache;
  torch::NoGradGuard ng;
  m->ForwardHidden(torch::ones({1, 3}, torch::kLong), fo);
  EXPECT_EQ(cache.length, 3);
  EXPECT_THROW(m->ForwardHidden(torch::ones({1, 2}, torch::kLong), fo), ftune::ModelError);
}
