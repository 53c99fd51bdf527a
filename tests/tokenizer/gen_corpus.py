#!/usr/bin/env python3
"""Deterministic tokenizer parity corpus: the hand-written seeds plus generated mixtures.

    python3 gen_corpus.py --seeds seeds.jsonl --out corpus.jsonl [--count 2500] [--seed 1234]

Writes one JSON string per line. Every string is valid Unicode without lone surrogates
(both ftune and tokenizers.js read the lines as JSON). All characters were assigned before
Unicode 14: \p{L}/\p{N} come from the Unicode tables of each regex engine (PCRE2 10.42 on
Debian 12, V8's ICU in node), and letters of newer scripts are unassigned (Cn) to the older
tables, which changes the pre-tokenization of their neighbours.
"""
import argparse
import json
import random

SCRIPTS = {
    "latin": "café naïve façade Ærøskøbing Ångström über Straße Œuvre déjà vu señor "
             "łódź český Ørsted smörgåsbord Þórr Ğüneş İstanbul",
    "english": "the quick brown fox jumps over the lazy dog while tokenizers split words "
               "into pieces and merge frequent pairs until the vocabulary is exhausted",
    "cyrillic": "Привет мир как дела всё хорошо съешь же ещё этих мягких французских булок",
    "greek": "Καλημέρα κόσμε ξεσκεπάζω την ψυχοφθόρα βδελυγμία ΑΒΓΔ αβγδ",
    "arabic": "مرحبا بالعالم كيف حالك اليوم نحن نتعلم تقسيم النصوص",
    "hebrew": "שלום עולם מה שלומך היום אנחנו לומדים",
    "devanagari": "नमस्ते दुनिया आप कैसे हैं हम आज टोकनाइज़र सीख रहे हैं",
    "cjk": "你好世界我们今天学习分词器中文文本没有空格漢字",
    "kana": "こんにちは世界ひらがなカタカナ日本語の文章ですｶﾀｶﾅ",
    "korean": "안녕하세요 세계 한국어 문장입니다 토크나이저",
    "thai": "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "vietnamese": "Tiếng Việt có dấu Hà Nội Thành phố Hồ Chí Minh",
}

EMOJI = ["👍", "👍🏻", "👍🏽", "👍🏿", "👨‍👩‍👧‍👦", "👩‍❤️‍💋‍👨", "🧑🏿‍💻", "🏳️‍🌈", "🏴‍☠️",
         "🇺🇸", "🇯🇵", "🇫🇷", "🇩🇪", "🇧🇷", "❤️", "❤", "✌🏼", "#️⃣", "1️⃣", "😀", "🤣", "🎉",
         "🙏🏾", "👩🏽‍🔬", "🐍", "🦀", "☕", "⚡", "✨"]

WHITESPACE = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n",
              " \n", "\n ", " \t ", "\u00a0", "\u3000", "\u2002", "\u2009", "\u202f",
              "\u2028", "\u0085", "\u000b", "\u000c", "  \n  ", "\t\n"]

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>", "<s>", "</s>", "<unk>", "<|reserved_special_token_3|>",
            "<|eot_id", "</s", "<|", "|>"]

CODE = [
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += v[i];\n}",
    "if (x != null && y >= 0) { return x?.y ?? 0; }",
    "import numpy as np\narr = np.zeros((3, 4), dtype=np.float32)",
    "#include <vector>\nstd::vector<int> v{1, 2, 3};",
    "SELECT * FROM t WHERE a = 'b' ORDER BY c DESC;",
    "fn main() { println!(\"{}\", 42); }",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
    "    \"key\": \"value\",\n    \"list\": [1, 2, 3]",
    "echo \"$HOME\" && cd ~/src || exit 1",
]

CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M",
                "'LL", "'D", "'Re", "'rE", "'Ll", "'lL", "'Ve", "’s"]

WORD_CASES = [str.lower, str.upper, str.title, lambda s: s, lambda s: s.swapcase()]


def words(rng, script, k):
    ws = SCRIPTS[script].split()
    return [rng.choice(ws) for _ in range(k)]


def digits(rng):
    kind = rng.randrange(6)
    if kind == 0:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 40)))
    if kind == 1:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 8)}f}"
    if kind == 2:
        return f"{rng.randint(0, 10**9):,}"
    if kind == 3:
        return "".join(rng.choice("٠١٢٣٤٥٦٧٨٩") for _ in range(rng.randint(1, 8)))
    if kind == 4:
        return "".join(rng.choice("०१२३४५६७८९") for _ in range(rng.randint(1, 8)))
    return rng.choice(["²³", "¼½¾", "Ⅻ", "①②③", "０１２３"]) + str(rng.randint(0, 999))


def fragment(rng):
    kind = rng.randrange(10)
    if kind <= 3:
        script = rng.choice(list(SCRIPTS))
        ws = words(rng, script, rng.randint(1, 8))
        case = rng.choice(WORD_CASES)
        return case(" ".join(ws))
    if kind == 4:
        return digits(rng)
    if kind == 5:
        return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4)))
    if kind == 6:
        return rng.choice(CODE)
    if kind == 7:
        w = rng.choice(SCRIPTS["english"].split())
        return rng.choice(WORD_CASES)(w) + rng.choice(CONTRACTIONS)
    if kind == 8:
        return rng.choice(SPECIALS)
    return "".join(rng.choice("!?.,;:-_()[]{}<>/\\|@#$%^&*+=~`'\"") for _ in range(rng.randint(1, 5)))


def mixture(rng):
    parts = []
    for _ in range(rng.randint(1, 7)):
        parts.append(fragment(rng))
        parts.append(rng.choice(WHITESPACE) if rng.random() < 0.6 else
                     rng.choice(["", "", " ", ", ", ". "]))
    text = "".join(parts)
    r = rng.random()
    if r < 0.1:
        text = rng.choice(WHITESPACE) + text
    elif r < 0.2:
        text = text.rstrip() + rng.choice([" ", "  ", "   ", "\t", "\n", "\n\n"])
    elif r < 0.25:
        text = text.strip()
    return text


def long_text(rng):
    kind = rng.randrange(5)
    if kind == 0:  # one very long "word" (a single BPE run for SentencePiece-BPE)
        return rng.choice(["a", "ab", "xyz", "é", "你", "😀"]) * rng.randint(200, 3000)
    if kind == 1:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(200, 2000)))
    if kind == 2:
        return rng.choice([" ", "\n", "\t", "\u3000", " \n"]) * rng.randint(50, 1500) + "end"
    if kind == 3:
        return " ".join(words(rng, rng.choice(list(SCRIPTS)), rng.randint(100, 600)))
    return "".join(mixture(rng) for _ in range(rng.randint(10, 40)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with open(a.seeds, encoding="utf-8") as f:
        seeds = [json.loads(line) for line in f if line.strip()]
    texts = list(seeds)
    # Seeds recombined with each other and with whitespace and special tokens.
    for _ in range(len(seeds)):
        texts.append(rng.choice(seeds) + rng.choice(WHITESPACE + SPECIALS) + rng.choice(seeds))
    while len(texts) < a.count - 40:
        texts.append(mixture(rng))
    while len(texts) < a.count:
        texts.append(long_text(rng))
    with open(a.out, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps(t, ensure_ascii=False) + "\n")
    print(f"gen_corpus: {len(texts)} strings, {sum(len(t) for t in texts)} characters -> {a.out}")


if __name__ == "__main__":
    main()
