#!/usr/bin/env python3
"""Writes the bundled inputs of ftune's end-to-end demo (cluster/demo.sh), deterministically:

  corpus.jsonl        {"text": ...}                              plain text to pretrain on
  instructions.jsonl  {"question": ..., "answer": ..., "task": ...}  the dataset to finetune on
  tokenizer/          a character-level Llama-2-style tokenizer (tokenizer.json + config)

The skills: spell a word in capital letters, give its first / last letter, spell a short word
backwards, say whether a number is even or odd, give the next number, convert metric units.
The corpus demonstrates every skill in prose ("In capital letters, 'stone' is STONE.") on the
words below and on as many made-up words, on the numbers up to 999 and on unit conversions, so
pretraining teaches the base model the skills in general, not only for the words it saw. The
instructions ask the same things as questions ("Write the word 'stone' in capital letters." ->
"STONE") about the real words and the numbers up to 199 only; each record names its skill in
"task", which `ftune eval` reports exact match by. The finetune teaches the question / answer
format: the base model knows the facts but never answers a question in that format.

The questions cluster/demo.sh asks before and after finetuning (before_after.tsv) are in
neither file, and the words and numbers they ask about are nowhere in the corpus: this script
checks both, so those answers show what the finetuned model does with inputs it has never
seen.

The tokenizer is character level (every character one token: no merges; ASCII characters are
the byte tokens <0x00>..<0xFF>), so that a word and its capitals, reversal and letters are
the same sequence of tokens, in another order or case.

Re-running it reproduces the committed files byte for byte (python3 make_demo_data.py &&
git diff --exit-code). Written for ftune; CC0 1.0 (see README.md).
"""
import argparse
import json
import os
import random
import re

SEED = 20240607
HERE = os.path.dirname(os.path.abspath(__file__))

WORDS = """
able acid aged also area army away baby back ball band bank base bath bear beat bell belt best
bird blue boat body bone book boot born both bowl bread brick bridge bright brown build burn
cake call calm camp card care cart case cash cast cat cell chair chalk cheap check chest chin
city clay clean clock cloud coal coat code cold cook cool copy corn cost crab crow cube cup
dark date deer desk dish door dove down draw dream dress drink drum duck dust eagle early earth
east easy edge egg eight empty face fact farm fast fern field fire fish five flag flat floor
flow fog food foot fork fox frog fruit game gate gift girl glass goat gold good grape grass
green grey hall hand hard hat head heart hill home hope horn horse hot hour house ice idea
iron jam jar jump key kind king kite lake lamp land large leaf left lemon light lime line lion
lock long loud love low lunch map mark milk mint moon moss mouse mud nail name near neck nest
net new night nine north nose note oak ocean oil old olive open owl page paint palm paper park
path peach pear pen pig pine pink plan plant plate plum pond pool port pot rain red rice ring
river road rock roof room root rope rose round salt sand seed seven shell ship shoe short silk
sing sink six sky slow small snow soap sock soft song soup south star stone storm sun swan
table tall tea ten tent three tide tiger time toad tree two vase wall warm wave west wheat wind
wolf wood wool word yard year yellow zero zinc
actor after agent alarm album alert alive alley among angle ankle apple april apron arena
arrow atlas attic aunt autumn avenue bacon badge bake banjo barn basket beach beard bench
berry bike blade blank blanket blast blend blink block bloom board bonus boost brain branch
brave breeze brush bubble bucket buffalo bundle butter button cabin cable camel candle candy
canoe canvas carbon carpet carrot castle cattle cedar chain champ charm cherry chess chick
chief child chimney cider cinema circle civic claim class cliff climb cloak clover coach
cobra cocoa coconut coin comet coral cotton couch cousin cover cradle crane crayon cream
crown crumb crust cycle daisy dance delta denim desert diary dinner dolphin donkey dozen
dragon drawer driver eager ember engine enjoy entry equal error event exact fabric fairy
falcon family feast fever fiber fiddle final finger flame flash flock flour flute focus
forest fossil frame fresh front frost funny garden garlic gecko ghost giant ginger giraffe
glove glow grain grand gravel gravy guest guide guitar habit hammer harbor harvest hazel
helmet hero honey hotel humor hunter igloo index inlet insect island ivory jacket jaguar
jelly jewel joke journey judge juice jungle kettle kitten koala label ladder lady laser
lava lawn layer lemur level lily limit linen liquid lizard lobster locket lodge lotus
lucky magic magnet mango maple marble market meadow medal melon metal meter middle mirror
mitten model monkey motor mountain muffin museum music napkin needle nickel noble noodle
number nurse nutmeg oasis object orange orbit orchid otter oven owner oyster paddle palace
panda panel parade parrot pasta peanut pebble pencil pepper piano pickle pillow pilot
planet plaza pocket poem polar pony potato powder prince puppy puzzle quail queen quiet
quilt rabbit racket radar radio raven razor record reef ribbon riddle rider robin robot
rocket rubber ruler saddle sailor salad salmon sample scarf school scout season shadow
sheep shelf shield shirt shovel signal silver sister skate sketch sleeve slide smile smoke
snack snail spark spider spoon spring square squid stable stamp steam stick story stove
straw street sugar summer sunset sweater syrup tablet tailor teapot temple thunder ticket
timber toast tomato tongue topaz torch towel tower trail train treat tribe trophy truck
trumpet tulip tunnel turkey turtle twig uncle unicorn valley velvet violin visit voice
wagon waffle walnut walrus wander water weasel whale wheel whistle window winter wizard
yogurt zebra
""".split()

MADE_UP_WORDS = 675           # made-up words, corpus only (the skills, not the words)
BACKWARDS_MAX = 5             # "Spell ... backwards." for words of up to 5 letters
QA_NUMBERS = range(1, 200)    # even or odd / the next number, as questions
CORPUS_NUMBERS = range(1, 1000)
QA_UNIT_COUNTS = range(1, 41)
CORPUS_UNIT_COUNTS = range(1, 100)
UNITS = [  # (big unit, small unit, factor)
    ("meters", "centimeters", 100),
    ("kilograms", "grams", 1000),
    ("kilometers", "meters", 1000),
    ("liters", "milliliters", 1000),
    ("centimeters", "millimeters", 10),
]
NUMBER_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve"]


def parity(n):
    return "even" if n % 2 == 0 else "odd"


def qa_examples(rng):
    """(task, question, answer) triples: every task over its whole (small) domain."""
    out = []
    for w in WORDS:
        out.append(("capitals", f"Write the word '{w}' in capital letters.", w.upper()))
        out.append(("first_letter", f"What is the first letter of '{w}'?", w[0]))
        out.append(("last_letter", f"What is the last letter of '{w}'?", w[-1]))
        if len(w) <= BACKWARDS_MAX:
            out.append(("backwards", f"Spell '{w}' backwards.", w[::-1]))
    for n in QA_NUMBERS:
        out.append(("even_odd", f"Is {n} even or odd?", parity(n)))
        out.append(("next_number", f"What number comes after {n}?", str(n + 1)))
    for big, small, f in UNITS:
        for n in QA_UNIT_COUNTS:
            out.append(("units", f"How many {small} are in {n} {big}?", str(n * f)))
    rng.shuffle(out)
    return out


def made_up_words(rng, count, avoid):
    """Pronounceable strings of 3-8 letters that are not real words (nor in `avoid`)."""
    consonants, vowels = "bcdfghjklmnprstvwxyz", "aeiou"
    words = set()
    while len(words) < count:
        n = rng.randint(3, 8)
        vowel = rng.random() < 0.5
        w = ""
        while len(w) < n:  # alternating consonants and vowels, now and then a double letter
            w += w[-1] if w and rng.random() < 0.1 else rng.choice(vowels if vowel else consonants)
            vowel = not vowel
        if w not in avoid:
            words.add(w)
    return sorted(words)


def word_text(rng, w):
    """One paragraph stating a word's capitals, first and last letter and reversal."""
    n = NUMBER_NAMES[len(w)] if len(w) < len(NUMBER_NAMES) else str(len(w))
    s = [rng.choice([f"The word '{w}' has {n} letters.", f"'{w}' is a word of {n} letters."]),
         rng.choice([f"'{w}' starts with the letter {w[0]} and ends with the letter {w[-1]}.",
                     f"The first letter of '{w}' is {w[0]} and the last letter is {w[-1]}."]),
         rng.choice([f"In capital letters, '{w}' is {w.upper()}.",
                     f"Written in capitals, '{w}' becomes {w.upper()}."]),
         rng.choice([f"Backwards, '{w}' reads {w[::-1]}.",
                     f"Spelled backwards, '{w}' is {w[::-1]}."])]
    rng.shuffle(s)
    return " ".join(s)


def corpus_texts(rng, avoid_words, avoid_numbers, avoid_units):
    texts = []
    for w in WORDS + made_up_words(rng, MADE_UP_WORDS, set(WORDS) | avoid_words):
        texts.append(word_text(rng, w))
    for n in CORPUS_NUMBERS:
        if avoid_numbers & {n, n + 1, n + 2}:
            continue
        texts.append(rng.choice([f"The number {n} is {parity(n)}. After {n} comes {n + 1}.",
                                 f"{n} is an {parity(n)} number, and the next number is {n + 1}.",
                                 f"Counting on from {n}: {n + 1}, {n + 2}. {n} is {parity(n)}."]))
    for big, small, f in UNITS:
        for n in CORPUS_UNIT_COUNTS:
            if (n, big, small) in avoid_units:
                continue
            texts.append(f"There are {f} {small} in one {big[:-1]}, so {n} {big} are {n * f} "
                         f"{small}.")
    rng.shuffle(texts)
    return texts


def held_out(before_after):
    """The words, numbers and unit conversions the before / after questions ask about."""
    words, numbers, units = set(), set(), set()
    for q in before_after:
        words.update(re.findall(r"'([a-z]+)'", q))
        m = re.fullmatch(r"How many (\w+) are in (\d+) (\w+)\?", q)
        if m:
            units.add((int(m.group(2)), m.group(3), m.group(1)))
        else:
            numbers.update(int(x) for x in re.findall(r"\d+", q))
    return words, numbers, units


def tokenizer_files():
    """A Llama-2-style tokenizer.json with no merges: <unk> <s> </s>, the space piece, and the
    256 byte tokens every other character falls back to."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581": 3}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 4 + b
    special = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True}
               for i, t in enumerate(["<unk>", "<s>", "</s>"])]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "vocab": vocab, "merges": []},
    }
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
              "eos_token": "</s>", "pad_token": None, "model_max_length": 4096,
              "tokenizer_class": "LlamaTokenizer"}
    return tok, config


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=HERE, help="output directory (default: beside this script)")
    out = ap.parse_args().out
    before_after = [l.split("\t")[0] for l in open(os.path.join(HERE, "before_after.tsv"))]
    words, numbers, units = held_out(before_after)

    rng = random.Random(SEED)
    qa = [x for x in qa_examples(rng) if x[1] not in before_after]
    texts = corpus_texts(rng, words, numbers, units)
    # The before / after questions and what they ask about are nowhere in the data.
    assert not set(before_after) & {q for _, q, _ in qa}
    for t in texts:
        assert not any(re.search(rf"\b{w}\b", t) for w in words), t
        assert not any(re.search(rf"\b{n}\b", t) for n in numbers), t
        assert not any(f"{n} {big} are" in t for n, big, _ in units), t
    for _, q, _ in qa:
        assert not any(f"'{w}'" in q for w in words), q

    os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
    with open(os.path.join(out, "instructions.jsonl"), "w", encoding="utf-8") as f:
        for task, q, a in qa:
            f.write(json.dumps({"question": q, "answer": a, "task": task}) + "\n")
    with open(os.path.join(out, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    tok, config = tokenizer_files()
    with open(os.path.join(out, "tokenizer", "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, indent=1, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(out, "tokenizer", "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)
        f.write("\n")
    print(f"wrote {len(qa)} instruction examples, {len(texts)} corpus texts "
          f"({sum(len(t) for t in texts)} characters) and a {len(tok['model']['vocab'])}-id "
          f"tokenizer to {out}")


if __name__ == "__main__":
    main()
