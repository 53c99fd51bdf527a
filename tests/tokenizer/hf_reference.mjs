// Reference encoder/decoder: @huggingface/tokenizers (tokenizers.js) on a tokenizer.json.
//   node hf_reference.mjs --tokenizer DIR --jsonl FILE [--add-special-tokens]
//        one JSON string per line in, one JSON array of ids per line out
//   node hf_reference.mjs --tokenizer DIR --jsonl FILE --decode
//        one JSON array of ids per line in, one JSON string per line out
//   node hf_reference.mjs --tokenizer DIR --jsonl FILE --bench N
//        encodes every line N times, prints one JSON line of timings (encode time only)
// Module resolution: run with NODE_PATH unset; the script imports from --modules DIR
// (the node_modules folder the packages were installed into).
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
const opt = (name, def = undefined) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};
const flag = (name) => args.includes(name);

const modules = opt("--modules");
const tokDir = opt("--tokenizer");
const jsonl = opt("--jsonl");
if (!modules || !tokDir || !jsonl) {
  console.error("usage: hf_reference.mjs --modules NODE_MODULES --tokenizer DIR --jsonl FILE [--add-special-tokens|--decode|--bench N]");
  process.exit(2);
}
const entry = path.join(modules, "@huggingface", "tokenizers", "dist", "tokenizers.mjs");
const { Tokenizer } = await import(pathToFileURL(entry).href);

const tokenizerJson = JSON.parse(fs.readFileSync(path.join(tokDir, "tokenizer.json"), "utf8"));
const configPath = path.join(tokDir, "tokenizer_config.json");
const tokenizerConfig = fs.existsSync(configPath) ? JSON.parse(fs.readFileSync(configPath, "utf8")) : {};
const tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);

const lines = fs.readFileSync(jsonl, "utf8").split("\n").filter((l) => l.trim().length > 0).map((l) => JSON.parse(l));
const addSpecial = flag("--add-special-tokens");
const encode = (text) => tokenizer.encode(text, { add_special_tokens: addSpecial }).ids;

const out = [];
if (flag("--decode")) {
  for (const ids of lines) {
    out.push(JSON.stringify(ids.length === 0 ? "" : tokenizer.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false })));
  }
} else if (opt("--bench")) {
  const repeats = Number(opt("--bench"));
  const texts = lines.map((v) => (typeof v === "string" ? v : v.text));
  let tokens = 0;
  const t0 = process.hrtime.bigint();
  for (let r = 0; r < repeats; ++r) {
    for (const t of texts) tokens += encode(t).length;
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  out.push(JSON.stringify({ impl: "hf-tokenizers-js", texts: texts.length, repeats, tokens, seconds, tokens_per_s: tokens / seconds }));
} else {
  for (const v of lines) out.push(JSON.stringify(encode(typeof v === "string" ? v : v.text)));
}
process.stdout.write(out.join("\n") + "\n");
