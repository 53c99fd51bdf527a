// Reference chat-template renderer: transformers.js (@huggingface/transformers, whose templates
// run on @huggingface/jinja) for tests/e2e/chat_template_parity_test.sh.
//   node reference.mjs --modules NODE_MODULES --tokenizer-dir DIR --cases FILE.jsonl > out.jsonl
// One output line per case, in input order:
//   {"name", "text", "ids"}  text from apply_chat_template(tokenize: false), ids from
//                            tokenize: true (the rendered text encoded without adding special
//                            tokens, as transformers does);
//   {"name", "error"}        the template (or the tokenizer's lack of one) raised;
//   {"name", "skip"}         transformers.js cannot load this tokenizer at all.
// Offline: env.allowRemoteModels = false and the tokenizer is loaded from DIR on disk.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const modules = opt("--modules");
const tokDir = opt("--tokenizer-dir");
const casesPath = opt("--cases");
if (!modules || !tokDir || !casesPath) {
  console.error("usage: reference.mjs --modules NODE_MODULES --tokenizer-dir DIR --cases FILE.jsonl");
  process.exit(2);
}

const cases = fs.readFileSync(casesPath, "utf8").split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
const emit = (rows) => process.stdout.write(rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
const message = (e) => (e && e.message ? e.message : String(e));

const entry = path.join(modules, "@huggingface", "transformers", "dist", "transformers.node.mjs");
const { env, AutoTokenizer } = await import(pathToFileURL(entry).href);
env.allowRemoteModels = false;
env.allowLocalModels = true;
const absDir = path.resolve(tokDir);
env.localModelPath = path.dirname(absDir);

let tokenizer;
try {
  tokenizer = await AutoTokenizer.from_pretrained(path.basename(absDir));
} catch (e) {
  emit(cases.map((c) => ({ name: c.name, skip: `transformers.js cannot load ${absDir}: ${message(e)}` })));
  process.exit(0);
}

const rows = [];
for (const c of cases) {
  const options = {
    add_generation_prompt: c.add_generation_prompt ?? false,
    ...(c.tools !== undefined ? { tools: c.tools } : {}),
    ...(c.documents !== undefined ? { documents: c.documents } : {}),
    ...(c.kwargs ?? {}),
  };
  try {
    // structuredClone: a template must not see another call's mutations of the same objects.
    const text = tokenizer.apply_chat_template(structuredClone(c.messages), { ...structuredClone(options), tokenize: false });
    const ids = tokenizer.apply_chat_template(structuredClone(c.messages), {
      ...structuredClone(options), tokenize: true, return_tensor: false, return_dict: false,
    });
    rows.push({ name: c.name, text, ids: Array.from(ids, Number) });
  } catch (e) {
    rows.push({ name: c.name, error: message(e) });
  }
}
emit(rows);
