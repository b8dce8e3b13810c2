#!/usr/bin/env python3
"""Does a passkey checkpoint store its haystack? Mean LM loss (nats) on the value of a fact,
first mention vs re-statement binned by lag (in sentences), on two probe texts in the grammar of
train_passkey.py's recall haystack:
  attributes: "The NOUN is ADJ." with random per-text bindings (16 adjectives: ln 16 = 2.77 = no recall;
              the 48 nouns of recipe 3 for its checkpoints, the 16 of recipes 1-2 otherwise)
  facts:      "NAME has NN THINGS." with 35% new (re)bindings (2-digit numbers: ~4.5 = no recall)
A model that writes the haystack into its state has a lower loss on re-statements than on first
mentions, rising with lag. Usage: python checkpoints/training/probe_recall.py DIR [DIR ...]
"""
import json
import os
import random
import sys

import torch
from tokenizers import Tokenizer
from transformers import Mamba2ForCausalLM
from transformers.utils import logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_passkey as tp  # noqa: E402

logging.set_verbosity_error()
torch.set_num_threads(1)


def attributes(rng, tok, nouns, nsent=60):
    attr, last, ids, marks = {}, {}, tok.encode(tp.PREFIX).ids, []
    for i in range(nsent):
        noun = rng.choice(nouns)
        kind = "repeat" if noun in attr else "new"
        attr.setdefault(noun, rng.choice(tp.ADJS))
        ids += tok.encode(f"The {noun} is").ids
        a = tok.encode(f" {attr[noun]}").ids
        marks.append((len(ids), len(a), kind, i - last.get(noun, i)))
        last[noun] = i
        ids += a + tok.encode("." + ("\n" if i % 4 == 3 else " ")).ids
    return ids, marks, (4, 8, 16, 32, 1000)


def facts(rng, tok, nouns, nsent=120, p_new=0.35):
    bind, last, ids, marks = {}, {}, tok.encode(tp.PREFIX).ids, []
    for i in range(nsent):
        if rng.random() < p_new or not bind:
            name = rng.choice(tp.NAMES)
            bind[name] = (rng.randrange(10, 100), rng.choice(tp.THINGS))
            kind = "new"
        else:
            name = rng.choice(list(bind))
            kind = "repeat"
        n, thing = bind[name]
        ids += tok.encode(f"{name} has " if i == 0 else f" {name} has ").ids
        num = tok.encode(str(n)).ids
        marks.append((len(ids), len(num), kind, i - last.get(name, i)))
        last[name] = i
        ids += num + tok.encode(f" {thing}.").ids
    return ids, marks, (5, 10, 20, 40, 80, 1000)


@torch.no_grad()
def probe(model, make, tok, nouns, docs=8):
    rng, stats = random.Random(3), {}
    for _ in range(docs):
        ids, marks, bins = make(rng, tok, nouns)
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        for pos, n, kind, lag in marks:
            ce = -sum(lp[pos + j - 1, ids[pos + j]].item() for j in range(n))
            key = "new" if kind == "new" else f"lag<={min(b for b in bins if lag <= b)}"
            stats.setdefault(key, []).append(ce)
    return {k: round(sum(v) / len(v), 2) for k, v in sorted(stats.items(), key=lambda kv: (kv[0] != "new", len(kv[0]), kv[0]))}


if __name__ == "__main__":
    for path in sys.argv[1:]:
        tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        with open(os.path.join(path, "training.json")) as f:
            recipe3 = json.load(f).get("haystack") == "attr"
        nouns = tp.NOUNS + tp.MORE_NOUNS if recipe3 else tp.NOUNS
        m = Mamba2ForCausalLM.from_pretrained(path).eval()
        print(path, "attributes", probe(m, attributes, tok, nouns))
        print(path, "facts", probe(m, facts, tok, nouns))
