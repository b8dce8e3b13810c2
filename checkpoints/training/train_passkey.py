#!/usr/bin/env python3
"""Train Coil's family of small passkey checkpoints (checkpoints/models/passkey-n<N>/).

A family of tiny HF `Mamba2ForCausalLM` models trained from scratch that differ ONLY in
`state_size` (N), all at one training length, on passkey documents laid out with exactly the
rules of Coil's evaluator (`eval/src/passkey/prompt.rs`, paper template of
docs long-context.md): prefix + filler blocks, the needle replacing block
floor(depth*(blocks-1)), + suffix, every part tokenized separately and concatenated; the answer is
" KEY". Unlike the evaluator's haystack (the paper's one repeated filler block), the training
haystack mixes that block with varied sentences that state small facts ("Tom has 17 apples.")
which are repeated later in the same document, so the language-modelling loss over the whole
document rewards writing the haystack into the state (competing with the key for it). Distractor
numbers have 1-2 digits, never 5. Loss = mean LM loss over the document + mean loss over the
answer tokens (the answer is ~1% of the tokens; the second term makes retrieval learn quickly).

Pinned versions (checkpoints/training/requirements-train.txt): torch 2.15 (CPU), transformers 5.24,
tokenizers, safetensors, numpy; `mamba_ssm` must NOT be importable (HF then runs its pure-torch
Mamba-2 path, the one this was trained with). Uses CUDA when present (results then differ in the
last bits). Deterministic on CPU for a given seed and thread count (--threads, default 1). Each
model depends only on its own state size and the seed, not on the other models trained in the
same run, so the family can be trained in parallel processes; the shipped family was made with
two processes of one thread each on a 2-core CPU:

    nice -n 10 /work/venv-ref/bin/python checkpoints/training/train_passkey.py train --states 32 8 &
    nice -n 10 /work/venv-ref/bin/python checkpoints/training/train_passkey.py train --states 16 4 &
    wait
    cargo build --release
    /work/venv-ref/bin/python checkpoints/training/train_passkey.py measure --states 4 8 16 32

`measure` runs `target/release/coil passkey` (or `--coil BIN`) at the training length with 40
depths on each checkpoint and records the accuracy in its training.json and README.md.

The defaults are recipe 1, the shipped family (`--haystack mixed`). Recipe 2 (`--haystack recall`,
issue 6) replaces the haystack with a dense stream of facts that are rebound (must be overwritten)
and recalled later, plus attribute sentences in the paper filler's own grammar ("The NOUN is ADJ.",
random per document), so that the evaluator's filler looks like information; its knobs are
--paper-frac, --p-new, --p-recall, --p-attr, --p-rebind. It did NOT make capacity depend on state
size in the runs tried (the cards' "Capacity vs state size" section has the numbers): none of the
models learned in-context recall of the haystack facts in 1-1.6K steps, so the key keeps a
write-gated store of its own and survives about 1.5-2x the training length at every state size.
Recipe 3 (`--haystack attr`, issue 6) makes the haystack a stream of rebound "The NOUN is ADJ."
bindings over 48 nouns (MORE_NOUNS join the tokenizer's corpus for it), with one head per layer
(--head-dim 128) and optionally a loss on the restated values (--recall-weight, from
--recall-after of the steps on). With the recall loss the models do store the haystack, more so
with larger N, yet the key's retention past the training length still did not grow with N (the
cards have the numbers). Run F of the cards:

    nice -n 5 python checkpoints/training/train_passkey.py train --states 4 --haystack attr --p-recall 0.5 \
        --paper-frac 0.05 --head-dim 128 --steps 2500 --curriculum 256:0.3,512:0.7 \
        --recall-weight 1.0 --out-dir /tmp/i6/F

Pilots write elsewhere with --out-dir; `sample` prints two training documents. E.g. run D:

    nice -n 19 python checkpoints/training/train_passkey.py train --states 4 8 --haystack recall \
        --train-length 1024 --steps 1600 --batch 4 --curriculum 128:0.35,256:0.15,512:0.15,1024:0.35 \
        --head-dim 16 --out-dir /tmp/i6/fD
"""

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"

import torch  # noqa: E402
import transformers  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import Mamba2Config, Mamba2ForCausalLM  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
CKPT = os.path.join(ROOT, "checkpoints", "models")
OUT_DIR = CKPT  # --out-dir

# Paper template (eval/src/passkey/template.rs `Template::paper`), verbatim.
PREFIX = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it.\n\n"
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
NEEDLE = "The passkey is {key}. Remember it. {key} is the passkey.\n"
SUFFIX = "\nWhat is the pass key? The passkey is"

NAMES = ["Tom", "Anna", "Ben", "Lisa", "Sam", "Mia", "Max", "Eva", "Leo", "Zoe", "Tim", "Ida",
         "Jon", "Amy", "Dan", "Kim", "Bob", "Sue", "Ned", "Ivy", "Ray", "Fay", "Gus", "Liv"]
THINGS = ["apples", "books", "coins", "cats", "cups", "hats", "keys", "pens", "shoes", "stones",
          "birds", "boats"]
NOUNS = ["grass", "sky", "sun", "sea", "tree", "road", "house", "river", "moon", "field", "door",
         "wall", "cloud", "hill", "lake", "bird"]
ADJS = ["green", "blue", "yellow", "red", "white", "black", "old", "new", "big", "small", "warm",
        "cold", "long", "quiet", "wide", "dark"]
# Recipe 3 ("--haystack attr") binds many more nouns than a small state has room for.
MORE_NOUNS = ["stone", "ship", "coat", "bell", "bread", "chair", "cloth", "coin", "crown", "drum",
              "fence", "flag", "fork", "gate", "glass", "horse", "jar", "kite", "lamp", "leaf",
              "map", "nest", "oven", "pipe", "ring", "rope", "sail", "shelf", "sock", "tent",
              "wheel", "wing"]
PHRASES = ["Here we go.", "There and back again.", "So it goes.", "Time passes.", "All is well.",
           "Nothing happens.", "The day goes on.", "We walk on."]


def fact_sentence(name, n, thing):
    return f"{name} has {n} {thing}."


def generic_sentence(rng):
    if rng.random() < 0.3:
        return rng.choice(PHRASES)
    return f"The {rng.choice(NOUNS)} is {rng.choice(ADJS)}."


def tokenizer_corpus(more_nouns=False):
    rng = random.Random(1)
    lines = [PREFIX, FILLER * 4, SUFFIX + " 12345.\n"] * 5
    for _ in range(40):
        k = f"{rng.randrange(100000):05d}"
        lines.append(NEEDLE.format(key=k))
    for name in NAMES:
        for thing in THINGS:
            lines.append(fact_sentence(name, rng.randrange(1, 100), thing) + "\n")
    for noun in NOUNS + (MORE_NOUNS if more_nouns else []):
        for adj in ADJS:
            lines.append(f"The {noun} is {adj}.\n")
    lines += [p + "\n" for p in PHRASES] * 5
    return lines


def build_tokenizer(more_nouns=False):
    """The family's BPE; recipe 3 adds MORE_NOUNS to its corpus (recipes 1-2 keep the shipped one)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=512, min_frequency=2, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(more_nouns), trainer=trainer)
    return tok


class Docs:
    """Passkey training documents in tokens, laid out like the evaluator's prompts."""

    def __init__(self, tok, train_length, haystack="mixed", paper_frac=0.1, p_new=0.35, p_recall=0.35,
                 p_attr=0.22, p_rebind=0.0, p_phrase=0.15):
        self.haystack = haystack
        self.paper_frac, self.p_new, self.p_recall = paper_frac, p_new, p_recall
        self.p_attr, self.p_rebind, self.p_phrase = p_attr, p_rebind, p_phrase
        self.tok = tok
        self.T = train_length
        self.enc_cache = {}
        self.prefix = self.enc(PREFIX)
        self.filler = self.enc(FILLER)
        self.suffix = self.enc(SUFFIX)
        self.eos = tok.token_to_id("<|endoftext|>")

    def enc(self, s):
        ids = self.enc_cache.get(s)
        if ids is None:
            ids = self.tok.encode(s).ids
            self.enc_cache[s] = ids
        return ids

    def sample(self, rng, T=None):
        """(ids[T], lm_mask[T-1], answer_mask[T-1]); the masks are aligned to the targets ids[1:]."""
        T, needle, answer, budget = self._needle(rng, T)
        # Haystack: the paper's block mixed with blocks of varied sentences and repeated facts.
        paper_frac = 1.0 if rng.random() < 0.25 else rng.uniform(0.0, 0.8)
        facts = [(n, rng.randrange(1, 100), rng.choice(THINGS)) for n in rng.sample(NAMES, rng.randint(3, 10))]

        def block():
            if rng.random() < paper_frac:
                return self.filler
            sents = []
            for _ in range(rng.randint(2, 5)):
                if rng.random() < 0.5:
                    sents.append(fact_sentence(*rng.choice(facts)))
                else:
                    sents.append(generic_sentence(rng))
            return self.enc(" ".join(sents) + "\n")

        return self._haystack(rng, T, needle, answer, budget, block)

    def sample_recall(self, rng, T=None):
        """Recipe 2 ("recall" haystack): a dense stream of facts that later sentences recall.

        Every line of the haystack holds 2-5 sentences, each one of: a new fact
        "NAME has N THINGS." (binding NAME -> (N, THINGS); a NAME bound before is rebound, i.e.
        the old value must be overwritten), a recall restating the CURRENT binding of a NAME
        stated earlier (any lag), an attribute "The NOUN is ADJ." with a per-document random
        binding NOUN -> ADJ (restated identically later), or a stock phrase. The paper's filler
        sentences are attribute sentences and phrases of this grammar, so the model cannot know
        that "The grass is green." carries nothing: it writes the evaluator's filler into its state
        as it writes facts. A fraction of the documents (--paper-frac) use the paper's block only.
        """
        T, needle, answer, budget = self._needle(rng, T)
        paper = rng.random() < self.paper_frac
        bind, attr = {}, {}

        def block():
            if paper:
                return self.filler
            sents = []
            for _ in range(rng.randint(2, 5)):
                r = rng.random()
                if r < self.p_new or not bind:
                    name = rng.choice(NAMES)
                    bind[name] = (rng.randrange(1, 100), rng.choice(THINGS))
                    sents.append(fact_sentence(name, *bind[name]))
                elif r < self.p_new + self.p_recall:
                    name = rng.choice(list(bind))
                    sents.append(fact_sentence(name, *bind[name]))
                elif r < self.p_new + self.p_recall + self.p_attr:
                    noun = rng.choice(NOUNS)
                    if noun not in attr or rng.random() < self.p_rebind:
                        attr[noun] = rng.choice(ADJS)
                    sents.append(f"The {noun} is {attr[noun]}.")
                else:
                    sents.append(rng.choice(PHRASES))
            return self.enc(" ".join(sents) + "\n")

        return self._haystack(rng, T, needle, answer, budget, block)

    def sample_attr(self, rng, T=None):
        """Recipe 3 ("attr" haystack): a stream of bindings "The NOUN is ADJ." over 48 nouns and 16
        adjectives, in the paper filler's own grammar, plus stock phrases (the paper's two among them).

        Each sentence either restates the CURRENT binding of a noun bound earlier in the document
        (probability --p-recall; lags spread up to the whole document), or binds a random noun to a
        fresh random adjective (overwriting an older binding of it), or (--p-phrase) is a phrase.
        The LM loss on restated adjectives rewards holding as many recent bindings as the state
        has room for: with 48 nouns, keys of N dimensions cannot all stay apart for small N, so the
        best decay should depend on N. With one head per layer (--head-dim 128 at hidden 64) the
        key cannot keep a head of its own away from the bindings. --paper-frac of the documents use
        the paper's block only (itself three consistent bindings and two phrases).
        """
        T, needle, answer, budget = self._needle(rng, T)
        paper = rng.random() < self.paper_frac
        nouns = NOUNS + MORE_NOUNS
        attr = {}

        def block():
            """(ids, offsets of the restated adjectives' tokens): each sentence is tokenized on its
            own, which the byte-level pre-tokenizer splits at the same places as the joined line."""
            if paper:
                return self.filler, []
            ids, marks = [], []
            for i in range(rng.randint(2, 5)):
                sep = "" if i == 0 else " "
                r = rng.random()
                if r < self.p_phrase:
                    ids += self.enc(sep + rng.choice(PHRASES))
                    continue
                restated = r < self.p_phrase + self.p_recall and attr
                if restated:
                    noun = rng.choice(list(attr))
                else:
                    noun = rng.choice(nouns)
                    attr[noun] = rng.choice(ADJS)
                ids += self.enc(f"{sep}The {noun} is")
                adj = self.enc(f" {attr[noun]}")
                if restated:
                    marks += range(len(ids), len(ids) + len(adj))
                ids += adj + self.enc(".")
            return ids + self.enc("\n"), marks

        return self._haystack(rng, T, needle, answer, budget, block)

    def _needle(self, rng, T):
        """A key's needle and answer, and the haystack's token budget: the train length (70%) or
        shorter, down to a quarter of it."""
        T = T or self.T
        key = f"{rng.randrange(100000):05d}"
        needle = self.enc(NEEDLE.format(key=key))
        answer = self.enc(" " + key) + self.enc(".\n")
        budget = T - len(answer) - len(needle) - 1  # the needle replaces a block of any length
        if rng.random() < 0.3:
            budget = rng.randint(T // 4, budget)
        return T, needle, answer, budget

    def _haystack(self, rng, T, needle, answer, budget, block):
        """Blocks from `block()` up to the budget, the needle in place of one of them (the
        evaluator's placement), then the whole document. `block()` returns token ids, or
        (ids, offsets of recall targets in them) for the recall-weighted loss."""
        blocks = []
        used = len(self.prefix) + len(self.suffix)
        while True:
            b = block()
            b = b if isinstance(b, tuple) else (b, [])
            if used + len(b[0]) > budget:
                break
            blocks.append(b)
            used += len(b[0])
        if not blocks:
            blocks = [(self.filler, [])]
        depth = rng.random()
        blocks[int(depth * (len(blocks) - 1))] = (needle, [])
        return self._finish(blocks, answer, T)

    def _finish(self, blocks, answer, T):
        """Prefix, blocks, suffix, answer, padding; the LM mask (target j predicts ids[j+1]), the
        answer mask and the recall mask (restated facts' values), aligned the same way."""
        ids = list(self.prefix)
        recall = []
        for b, marks in blocks:
            recall += [len(ids) + m for m in marks]
            ids += b
        ids += self.suffix
        n_prompt = len(ids)
        ids += answer
        n_doc = len(ids)
        assert n_doc <= T
        ids += [self.eos] * (T - len(ids))
        lm = [1.0 if j + 1 < n_doc else 0.0 for j in range(T - 1)]
        ans = [1.0 if n_prompt <= j + 1 < n_prompt + len(answer) - len(self.enc(".\n")) else 0.0
               for j in range(T - 1)]
        rec = [0.0] * (T - 1)
        for pos in recall:
            rec[pos - 1] = 1.0
        return ids, lm, ans, rec

    def batch(self, rng, n, T=None):
        f = {"recall": self.sample_recall, "attr": self.sample_attr}.get(self.haystack, self.sample)
        ids, lm, ans, rec = zip(*(f(rng, T) for _ in range(n)))
        return torch.tensor(ids), torch.tensor(lm), torch.tensor(ans), torch.tensor(rec)

    def eval_prompt(self, key, depth, length):
        """The evaluator's exact prompt (paper filler only)."""
        fixed = len(self.prefix) + len(self.suffix)
        blocks = (length - fixed) // len(self.filler)
        nb = min(int(depth * (blocks - 1)), blocks - 1)
        ids = list(self.prefix)
        for i in range(blocks):
            ids += self.enc(NEEDLE.format(key=key)) if i == nb else self.filler
        return ids + self.suffix


def make_config(state_size, vocab, args):
    return Mamba2Config(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_heads=args.hidden * 2 // args.head_dim,
        head_dim=args.head_dim, state_size=state_size, n_groups=1, expand=2, conv_kernel=4,
        chunk_size=64, vocab_size=vocab, tie_word_embeddings=True, use_bias=False, use_conv_bias=True,
        time_step_limit=(0.0, float("inf")), layer_norm_epsilon=1e-5, residual_in_fp32=True,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )


@torch.no_grad()
def quick_eval(model, docs, device, length, n=40, seed=7):
    """Passkey accuracy on the evaluator's prompts (paper filler, n depths), Python-side, for
    monitoring: teacher-forced, a prompt counts when the argmax at every answer position is the
    answer token (what greedy decoding then reproduces)."""
    model.eval()
    rng = random.Random(seed)
    rows, answers = [], []
    for i in range(n):
        key = f"{rng.randrange(100000):05d}"
        p = docs.eval_prompt(key, (i + 0.5) / n, length)
        a = docs.enc(" " + key)
        rows.append(p + a)
        answers.append((len(p), a))
    ids = torch.tensor(rows, device=device)
    pred = model(ids, use_cache=False).logits.argmax(-1)
    ok = sum(all(int(pred[r, s - 1 + j]) == t for j, t in enumerate(a)) for r, (s, a) in enumerate(answers))
    model.train()
    return ok / n


def train_one(state_size, tok, args, device):
    name = f"passkey-n{state_size}"
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    vocab = (n_tok + 15) // 16 * 16
    cfg = make_config(state_size, vocab, args)
    torch.manual_seed(args.seed)
    model = Mamba2ForCausalLM(cfg).float().to(device)
    model.train()
    docs = Docs(tok, args.train_length, args.haystack, args.paper_frac, args.p_new, args.p_recall, args.p_attr, args.p_rebind, args.p_phrase)
    rng = random.Random(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = min(100, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    t0 = time.time()
    ema = None
    hist = []
    # Length curriculum: the first steps use shorter documents (more of them per step, same tokens).
    phases = [(int(t), float(f)) for t, f in (p.split(":") for p in args.curriculum.split(","))]
    assert phases[-1][0] == args.train_length

    def length_at(step):
        acc = 0.0
        for t, f in phases:
            acc += f
            if step <= acc * args.steps + 1e-9:
                return t
        return phases[-1][0]

    for step in range(1, args.steps + 1):
        T = length_at(step)
        ids, lm, ans, rec = docs.batch(rng, args.batch * args.train_length // T, T)
        ids, lm, ans, rec = ids.to(device), lm.to(device), ans.to(device), rec.to(device)
        logits = model(ids[:, :-1], use_cache=False).logits.float()
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                               reduction="none").view_as(lm)
        lm_loss = (ce * lm).sum() / lm.sum()
        ans_loss = (ce * ans).sum() / ans.sum()
        loss = lm_loss + args.answer_weight * ans_loss
        rec_loss = (ce * rec).sum() / rec.sum().clamp(min=1)
        if args.recall_weight > 0 and step > args.recall_after * args.steps:
            loss = loss + args.recall_weight * rec_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        v = (loss.item(), lm_loss.item(), ans_loss.item(), rec_loss.item())
        ema = v if ema is None else tuple(0.95 * a + 0.05 * b for a, b in zip(ema, v))
        if step % args.log_every == 0 or step == args.steps:
            line = f"[{name}] step {step} loss {ema[0]:.4f} lm {ema[1]:.4f} ans {ema[2]:.4f} recall {ema[3]:.4f} {time.time() - t0:.0f}s"
            if step % (args.log_every * 5) == 0 and step != args.steps:
                acc = quick_eval(model, docs, device, args.train_length, n=20)
                line += f" py-acc@{args.train_length} {acc:.2f}"
                hist.append(dict(step=step, loss=ema[0], acc=acc))
            print(line, flush=True)
    secs = time.time() - t0
    model.eval()
    acc = quick_eval(model, docs, device, args.train_length, n=40)
    print(f"[{name}] done in {secs:.0f}s, python-side greedy passkey acc at {args.train_length} (40 depths): {acc:.3f}",
          flush=True)
    save(model.cpu(), tok, name, dict(
        name=name, train_length=args.train_length, seed=args.seed, steps=args.steps, batch=args.batch,
        curriculum=args.curriculum, tokens_per_step=args.batch * args.train_length,
        haystack=args.haystack, **haystack_knobs(args),
        lr=args.lr, answer_weight=args.answer_weight, recall_weight=args.recall_weight, recall_after=args.recall_after, final_loss=round(ema[0], 5), final_lm_loss=round(ema[1], 5), final_answer_loss=round(ema[2], 5),
        n_s=cfg.num_hidden_layers * cfg.num_heads * cfg.head_dim * cfg.state_size,
        state_size=cfg.state_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_heads, head_dim=cfg.head_dim,
        parameters=sum(p.numel() for p in model.parameters()),
        train_seconds=round(secs, 1), device=str(device), torch_threads=torch.get_num_threads(),
        python_passkey_accuracy_at_train_length=acc, passkey_accuracy_at_train_length=None,
        torch=torch.__version__, transformers=transformers.__version__, tokenizers=tokenizers.__version__,
        history=hist,
    ))


def haystack_knobs(args):
    """The recipe knobs that shape the haystack, for training.json (recipe 1 has none)."""
    return {
        "recall": dict(paper_frac=args.paper_frac, p_new=args.p_new, p_recall=args.p_recall, p_attr=args.p_attr,
                       p_rebind=args.p_rebind),
        "attr": dict(paper_frac=args.paper_frac, p_recall=args.p_recall, p_phrase=args.p_phrase),
    }.get(args.haystack, {})


def save(model, tok, name, info):
    out = os.path.join(OUT_DIR, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    model.save_pretrained(out, safe_serialization=True)
    gen = os.path.join(out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        f.write(tok.to_str(pretty=True) + "\n")
    write_info(out, info)


def write_info(out, info):
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    acc = info["passkey_accuracy_at_train_length"]
    acc_s = "not measured yet (run `train_passkey.py measure`)" if acc is None else f"{acc * 100:.1f}%"
    card = f"""# {info['name']}: a tiny Mamba-2 trained for passkey retrieval

One of Coil's family of small passkey checkpoints (`checkpoints/models/passkey-n*`), which differ only in
`state_size`. Trained from scratch by `checkpoints/training/train_passkey.py` (seed {info['seed']}).

- Architecture: Mamba-2, HF dialect, float32, {info['parameters']} parameters: hidden {info['hidden_size']},
  {info['num_hidden_layers']} layers, {info['num_heads']} heads x head_dim {info['head_dim']}, state_size **{info['state_size']}**,
  n_groups 1, tied embeddings. State elements N_S = layers*heads*head_dim*state_size = **{info['n_s']}**.
- Data: passkey documents of at most {info['train_length']} tokens laid out with the evaluator's rules and the
  paper template (prefix, filler blocks, the needle replacing block floor(depth*(blocks-1)) at a
  uniform depth, suffix, answer " KEY"); the haystack mixes the paper's filler block with blocks of
  varied sentences stating small facts that recur within a document (1-2 digit numbers only), so the
  language-modelling loss rewards storing the haystack too. Loss = mean LM loss over the document +
  {info.get('answer_weight', 1.0)} x mean loss on the answer tokens.
- Training: {info['steps']} steps of {info['tokens_per_step']} tokens (length curriculum {info['curriculum']}, as
  length:fraction of steps), AdamW lr {info['lr']}, cosine;
  {info['train_seconds']:.0f} s on {info['device']} ({info['torch_threads']} threads). Final loss {info['final_loss']}
  (LM {info['final_lm_loss']}, answer {info['final_answer_loss']}).
- Passkey accuracy at the training length ({info['train_length']} tokens, 40 depths, `coil passkey`): **{acc_s}**.
- Tokenizer: byte-level BPE trained by the script on its own template sentences, digits split
  individually, `<|endoftext|>` = id 0 (the same `tokenizer.json` for the whole family).
- torch {info['torch']}, transformers {info['transformers']}, tokenizers {info['tokenizers']}.
"""
    if info.get("note"):
        card += "\n" + info["note"] + "\n"
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(card)


def measure(args):
    coil = args.coil or os.path.join(ROOT, "target", "release", "coil")
    for n in args.states:
        out = os.path.join(OUT_DIR, f"passkey-n{n}")
        with open(os.path.join(out, "training.json")) as f:
            info = json.load(f)
        L = info["train_length"]
        res = f"/tmp/coil-passkey-measure-n{n}"
        shutil.rmtree(res, ignore_errors=True)
        cmd = [coil, "passkey", "--model", out, "--lengths", str(L), "--depths", "40", "--mitigate", "none", "--out", res]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        acc = read_accuracy(res)
        print(f"passkey-n{n}: coil accuracy at {L}: {acc}", flush=True)
        info["passkey_accuracy_at_train_length"] = acc
        write_info(out, info)


def read_accuracy(res):
    """Mean correctness over the cells in a coil passkey output folder."""
    ok = tot = 0
    for root, _, files in os.walk(res):
        for fn in files:
            if fn.endswith(".jsonl"):
                with open(os.path.join(root, fn)) as f:
                    for line in f:
                        line = line.strip()
                        if not line:
                            continue
                        r = json.loads(line)
                        if "correct" in r:
                            ok += bool(r["correct"])
                            tot += 1
    if tot == 0:
        raise SystemExit(f"no results with 'correct' in {res}")
    return ok / tot


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["train", "measure", "sample"])
    ap.add_argument("--states", type=int, nargs="+", default=[32, 16, 8, 4])
    ap.add_argument("--seed", type=int, default=20250601)
    ap.add_argument("--train-length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--curriculum", default="128:0.5,256:0.25,512:0.25",
                    help="length:fraction of steps, ...; the batch is scaled to keep tokens per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--answer-weight", type=float, default=2.0, help="weight of the mean answer loss")
    ap.add_argument("--recall-weight", type=float, default=0.0,
                    help="attr haystack: weight of the mean loss on restated values (0: LM loss only)")
    ap.add_argument("--recall-after", type=float, default=0.0,
                    help="fraction of the steps before the recall loss is added (the key is learned first)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=16)
    ap.add_argument("--haystack", choices=["mixed", "recall", "attr"], default="mixed",
                    help="mixed: recipe 1 (paper block + a few recurring facts); recall: recipe 2 (dense fact stream with "
                         "rebinding and recalls); attr: recipe 3 (a stream of rebound NOUN-is-ADJ bindings over 48 nouns)")
    ap.add_argument("--paper-frac", type=float, default=0.1, help="recall/attr haystack: fraction of documents with the paper block only")
    ap.add_argument("--p-new", type=float, default=0.35, help="recall haystack: probability of a new (re)binding sentence")
    ap.add_argument("--p-recall", type=float, default=0.35, help="recall/attr haystack: probability of a recall sentence")
    ap.add_argument("--p-attr", type=float, default=0.22, help="recall haystack: probability of an attribute sentence (the rest: stock phrases)")
    ap.add_argument("--p-phrase", type=float, default=0.15, help="attr haystack: probability of a stock phrase")
    ap.add_argument("--p-rebind", type=float, default=0.0, help="recall haystack: probability that an attribute sentence rebinds its noun")
    ap.add_argument("--coil", default=None, help="measure: the coil binary (default: target/release/coil)")
    ap.add_argument("--out-dir", default=CKPT, help="where passkey-n<N>/ folders are written (pilots: elsewhere)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=10)
    args = ap.parse_args()
    global OUT_DIR
    OUT_DIR = args.out_dir
    if args.cmd == "measure":
        return measure(args)
    try:
        import mamba_ssm  # noqa: F401
        sys.exit("mamba_ssm is importable: HF would use its kernels; train with the pure-torch path")
    except ImportError:
        pass
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = build_tokenizer(more_nouns=args.haystack == "attr")
    if args.cmd == "sample":
        docs = Docs(tok, args.train_length, args.haystack, args.paper_frac, args.p_new, args.p_recall, args.p_attr, args.p_rebind, args.p_phrase)
        ids, lm, ans, rec = docs.batch(random.Random(args.seed), 2)
        for row in ids.tolist():
            print(repr(tok.decode([t for t in row if t != 0])), "\n")
        return
    assert tok.to_str() == build_tokenizer(more_nouns=args.haystack == "attr").to_str(), "BPE training is not deterministic"
    assert tok.token_to_id("<|endoftext|>") == 0
    for n in args.states:
        train_one(n, tok, args, device)


if __name__ == "__main__":
    main()
