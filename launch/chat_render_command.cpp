// `ftune chat-render`: show what a chat template makes of conversations, without training.
//   ftune chat-render --tokenizer DIR --cases FILE.jsonl [--chat-template X]
//                     [--chat-template-kwarg name=value ...] [--ids] [--training]
// Each input line is {"messages": [...], "tools"?: [...], "documents"?: [...],
// "add_generation_prompt"?: bool, "kwargs"?: {...}, "name"?: ...}; each output line is
// {"name", "text"} (+ "ids": the token ids, as apply_chat_template(tokenize=True) gives them,
// with --ids; + "mask": the loss mask training would use, with --training) or {"name", "error"}
// when the template rejects the conversation. --cases - reads standard input. The parity test
// (tests/e2e/chat_template_parity_test.sh) compares this output with transformers'.
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "launch/commands.h"
#include "parallel/error.h"

namespace ftune::launch {
namespace {

using Json = nlohmann::ordered_json;

struct ChatRenderArgs {
  std::string tokenizer, cases, chat_template;
  std::vector<std::string> kwargs;
  bool ids = false, training = false;
};

void RunChatRender(const ChatRenderArgs& a) {
  std::optional<data::Tokenizer> tok;
  std::string tok_error;
  if (a.ids || a.training) {
    try {
      tok = data::Tokenizer::FromPath(a.tokenizer);
    } catch (const Error& e) {
      tok_error = e.what();
    }
  }
  std::ifstream file;
  if (a.cases != "-") {
    file.open(a.cases, std::ios::binary);
    if (!file) FT_THROW(IoError, "--cases {}: cannot open", a.cases);
  }
  std::istream& in = a.cases == "-" ? std::cin : file;
  std::map<std::string, data::ChatTemplate> templates;  // by the case's kwargs
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const Json c = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (c.is_discarded() || !c.is_object() || !c.contains("messages") ||
        !c["messages"].is_array()) {
      FT_THROW(DataError, "{}:{}: expected a JSON object with a \"messages\" array", a.cases,
               line_no);
    }
    std::vector<std::string> kwargs = a.kwargs;
    if (c.contains("kwargs")) {
      for (const auto& [k, v] : c["kwargs"].items()) kwargs.push_back(k + "=" + v.dump());
    }
    std::string key;
    for (const auto& k : kwargs) key += k + '\n';
    auto it = templates.find(key);
    if (it == templates.end()) {
      it = templates.emplace(key, data::ChatTemplate::Resolve(a.tokenizer, a.chat_template,
                                                             kwargs)).first;
    }
    const data::ChatTemplate& tmpl = it->second;
    Json out = Json::object();
    if (c.contains("name")) out["name"] = c["name"];
    try {
      if (a.training) {
        const data::ChatRender r = tmpl.RenderForTraining(c, /*train_on_prompt=*/false);
        out["text"] = r.text;
        Json spans = Json::array();
        for (const auto& [b, e] : r.trained) spans.push_back({b, e});
        out["trained"] = spans;
        if (tok) {
          std::vector<int32_t> ids;
          std::vector<uint8_t> mask;
          data::TokenizeChat(*tok, r, &ids, &mask);
          out["ids"] = ids;
          out["mask"] = mask;
        }
      } else {
        const Json none(nullptr);
        out["text"] = tmpl.Render(c["messages"], c.contains("tools") ? c["tools"] : none,
                                  c.contains("documents") ? c["documents"] : none,
                                  c.value("add_generation_prompt", false));
        if (tok) out["ids"] = tok->Encode(out["text"].get<std::string>(), false);
      }
      if ((a.ids || a.training) && !tok) out["ids_skip"] = tok_error;
    } catch (const DataError& e) {  // TemplateError, or a mask the tokenization cannot align
      out = Json::object();
      if (c.contains("name")) out["name"] = c["name"];
      out["error"] = e.what();
    }
    std::cout << out.dump(-1, ' ', false, Json::error_handler_t::replace) << '\n';
  }
  std::cout.flush();
}

}  // namespace

void AddChatRenderCommand(CLI::App& app) {
  auto args = std::make_shared<ChatRenderArgs>();
  auto* sub = app.add_subcommand("chat-render",
                                 "render conversations with a model's chat template");
  sub->add_option("--tokenizer", args->tokenizer,
                  "the model or tokenizer directory (tokenizer_config.json, chat_template.jinja)")
      ->required();
  sub->add_option("--cases", args->cases,
                  "JSONL: {\"messages\", \"tools\"?, \"documents\"?, \"add_generation_prompt\"?, "
                  "\"kwargs\"?} per line; - = stdin")
      ->required();
  sub->add_option("--chat-template", args->chat_template,
                  "a .jinja file or a named template of the tokenizer (default: its own)");
  sub->add_option("--chat-template-kwarg", args->kwargs,
                  "an extra template variable, name=value (repeatable)");
  sub->add_flag("--ids", args->ids, "also print the token ids of the rendered text");
  sub->add_flag("--training", args->training,
                "render as training does: the trained spans, ids and loss mask");
  sub->callback([args]() { RunChatRender(*args); });
}

}  // namespace ftune::launch
