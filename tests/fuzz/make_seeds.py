#!/usr/bin/env python3
"""Writes the seed inputs of each harness into DIR/<name>/ (cluster/fuzz.sh: seeds + the committed
corpus are fuzzed and merged back into tests/fuzz/corpus/<name>/). Seeds are small, valid files of
each format as ftune writes them or as Hugging Face ships them, plus the repository's own
fixtures and configs.  Usage: make_seeds.py SOURCE_DIR OUT_DIR"""
import hashlib
import json
import os
import struct
import sys

src, out = sys.argv[1], sys.argv[2]


def put(name, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def read(path):
    with open(os.path.join(src, path), "rb") as f:
        return f.read()


# --- safetensors ------------------------------------------------------------------------------
def safetensors(tensors, metadata=None):
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


f32 = lambda *v: struct.pack("<%df" % len(v), *v)
put("safetensors", safetensors([("w", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6))], {"format": "pt"}))
put("safetensors", safetensors([
    ("a", "BF16", [2, 2], b"\x80\x3f" * 4), ("b", "I64", [3], struct.pack("<3q", 1, -2, 3)),
    ("c", "F16", [1, 2, 2], b"\x00\x3c" * 4), ("d", "U8", [0, 4], b""), ("e", "BOOL", [], b"\x01"),
    ("f", "I32", [2], struct.pack("<2i", 7, 8)), ("g", "F64", [1], struct.pack("<d", 0.5)),
    ("h", "I16", [2], b"\x01\x00\x02\x00"), ("i", "I8", [3], b"\x01\x02\x03")]))
put("safetensors", safetensors([], {}))

# --- model.safetensors.index.json over the harness's two shards -------------------------------
put("safetensors_index", json.dumps({
    "metadata": {"total_size": 102},
    "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                   "model.norm.weight": "model-00001-of-00002.safetensors",
                   "lm_head.weight": "model-00002-of-00002.safetensors"}}, indent=2))
put("safetensors_index", json.dumps({"weight_map": {
    "lm_head.weight": "model-00002-of-00002.safetensors"}}))

# --- config.json ------------------------------------------------------------------------------
llama2 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
          "vocab_size": 32000, "hidden_size": 64, "intermediate_size": 172,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
          "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
          "torch_dtype": "float16", "attention_bias": False, "mlp_bias": False,
          "rope_scaling": None, "initializer_range": 0.02}
put("llama_config", json.dumps(llama2, indent=2))
llama3 = dict(llama2, vocab_size=128256, num_key_value_heads=2, head_dim=32, rope_theta=500000.0,
              tie_word_embeddings=True, bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
              torch_dtype="bfloat16",
              rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
put("llama_config", json.dumps(llama3, indent=2))
# transformers 5 writes rope_parameters (rope_theta inside) and dtype instead of torch_dtype.
llama5 = {k: v for k, v in llama3.items() if k not in ("rope_scaling", "rope_theta", "torch_dtype")}
llama5.update(dtype="bfloat16", rope_parameters=dict(llama3["rope_scaling"], rope_theta=500000.0))
put("llama_config", json.dumps(llama5, indent=2))

# --- tokenizer directory: tokenizer.json \0 tokenizer_config.json \0 generation_config.json ---
SP = "\u2581"


def added(i, content, special=True):
    return {"id": i, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": special}


def byte_char(b):
    n, table = 0, {}
    for x in range(256):
        direct = ord("!") <= x <= ord("~") or 0xA1 <= x <= 0xAC or x >= 0xAE
        table[x] = chr(x if direct else 256 + n)
        n += 0 if direct else 1
    return table[b]


def llama3_tokenizer():
    vocab = {byte_char(b): b for b in range(256)}
    g = byte_char(ord(" "))
    merges = []
    for a, b in [("H", "e"), ("l", "l"), ("He", "ll"), ("Hell", "o"), (g, "w"), ("o", "r"),
                 (g + "w", "or"), ("l", "d"), (g + "wor", "ld"), ("'", "s")]:
        vocab.setdefault(a + b, len(vocab))
        merges.append([a, b])
    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
               r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    return {"version": "1.0",
            "added_tokens": [added(300, "<|begin_of_text|>"), added(301, "<|eot_id|>")],
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
                 "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                 "use_regex": False}]},
            "post_processor": {"type": "TemplateProcessing",
                               "single": [{"SpecialToken": {"id": "<|begin_of_text|>",
                                                            "type_id": 0}},
                                          {"Sequence": {"id": "A", "type_id": 0}}],
                               "special_tokens": {"<|begin_of_text|>": {
                                   "id": "<|begin_of_text|>", "ids": [300],
                                   "tokens": ["<|begin_of_text|>"]}}},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                      "vocab": vocab, "merges": merges}}


def llama2_metaspace_tokenizer():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = 3 + b
    for t in [SP, "a", "b", SP + "a", "ab"]:
        vocab.setdefault(t, len(vocab))
    return {"version": "1.0", "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
            "normalizer": None,
            "pre_tokenizer": {"type": "Metaspace", "replacement": SP, "prepend_scheme": "first",
                              "split": False},
            "post_processor": None,
            "decoder": {"type": "Metaspace", "replacement": SP, "prepend_scheme": "first",
                        "split": False},
            "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True, "fuse_unk": True,
                      "vocab": vocab, "merges": [SP + " a", "a b"]}}


fixture = read("tests/fixtures/data/tokenizer/tokenizer.json")
fixture_cfg = read("tests/fixtures/data/tokenizer/tokenizer_config.json")
gen = json.dumps({"bos_token_id": 1, "eos_token_id": [2, 278], "do_sample": True}).encode()
put("tokenizer", fixture + b"\0" + fixture_cfg + b"\0" + gen + b"\0" + b"Hello <s> w\xc3\xb6rld")
put("tokenizer", fixture)
l3 = json.dumps(llama3_tokenizer()).encode()
l3_cfg = json.dumps({"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|eot_id|>"},
                     "add_bos_token": True, "add_eos_token": False}).encode()
put("tokenizer", l3 + b"\0" + l3_cfg + b"\0" + json.dumps({"eos_token_id": 301}).encode())
put("tokenizer", json.dumps(llama2_metaspace_tokenizer()).encode() + b"\0\0\0 a ab\n")

# --- JSONL records ------------------------------------------------------------------------------
for f in ["alpaca", "bad_utf8", "chat", "mixed", "qa", "text"]:
    put("records", read("tests/fixtures/data/%s.jsonl" % f))

# --- YAML config \0 --set overrides ---------------------------------------------------------------
for f in ["tiny.yaml", "demo_finetune.yaml", "demo_pretrain.yaml", "llama3_8b.yaml"]:
    put("config", read("configs/" + f))
put("config", read("configs/tiny.yaml") + b"\0train.steps=5\0parallel.dp=2\0parallel.tp=2\0"
    b"data.inputs=[a.jsonl, b.jsonl]\0model.arch.rope_theta=5e5")
put("config", b"\0run.name=x\0optim.lr=1e-4\0train.epochs=1")

# --- manifest.json, as WriteManifest writes it ------------------------------------------------
split = lambda n: {"num_docs": n, "num_tokens": 40 * n, "shards": [
    {"file": "train-00000.h5", "num_docs": n, "num_tokens": 40 * n, "bytes": 12345}]}
put("manifest", json.dumps({
    "format_version": 1, "created_by": "ftune prepare", "fingerprint": "ab" * 32,
    "tokenizer_sha256": "cd" * 32, "vocab_size": 32000, "bos_id": 1, "eos_ids": [2],
    "pad_id": -1, "template": "qa", "compression": 0, "max_seq_len": 512,
    "train_on_prompt": False,
    "sources": [{"path": "qa.jsonl", "sha256": "ef" * 32, "bytes": 2187}],
    "splits": {"train": split(9), "test": {"num_docs": 0, "num_tokens": 0, "shards": []}}},
    indent=1) + "\n")

# --- shard descriptions (shard_fuzz.cpp): datasets (how, n, values), then attributes ------------
u64 = lambda *v: struct.pack("<%dq" % len(v), *v)
tokens = bytes([0x01, 8]) + u64(*range(5, 13))             # int32 [8]
mask = bytes([0x81, 8]) + u64(0, 0, 1, 1, 0, 1, 1, 1)       # uint8 [8], chunked
offsets = bytes([0xC1, 3, 3])                               # well-formed [0, 3, 8], chunked
fixed = lambda text: bytes([1, 0, len(text) - 1]) + text + b"\0"  # right, fixed string, NULLPAD
attrs = bytes([1, 0]) + fixed(b"cd" * 32) + fixed(b"train") + bytes([1, 0] * 4)
put("shard", tokens + mask + offsets + attrs)
put("shard", bytes([0x01, 3]) + u64(1, 2, 3) + bytes([0x01, 3]) + u64(1, 1, 1) +
    bytes([0x01, 2]) + u64(0, 3) + attrs)
put("shard", tokens + mask + bytes([0x01, 3]) + u64(0, 9, 8) + attrs)
