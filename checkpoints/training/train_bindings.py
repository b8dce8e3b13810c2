#!/usr/bin/env python3
"""Train Coil's `bindings` family: tiny Mamba-2 checkpoints that differ only in state size, trained
on streams of distinct name -> key bindings with questions at lags spread over the whole stream
(multi-query associative recall in the passkey's own grammar, issue 32).

The grammar is the evaluator's built-in `bindings` template (eval/src/passkey/template.rs):

    prefix:  "Each name has a passkey. Remember them all.\n"
    block:   "The passkey of {name} is {key}.\n"        (a fresh name and a 2-digit key)
    question "What is the passkey of {name}? The passkey of {name} is" + " {key}" + ".\n"

Names are three syllables from SYLLABLES (48^3 = 110,592 names, the evaluator's generator draws
from the same set); keys are two digits. Every part is tokenized on its own and concatenated, as
the evaluator does. A stream holds distinct names only (no rebinding), so every question has one
right answer.

Training is truncated backpropagation through time (the paper's method for long training): a batch
of streams is cut into segments of `--segment` tokens, one optimizer step per segment, the state
(conv and SSM) carried from segment to segment without gradient. Streams run `--doc-segments`
segments (2,048 tokens by default), so the model trains at lengths past any small state's span:
what it can recall is limited by its state, not by the training length. Questions reach back at
most 4 bindings at first and twice as far every 1/8 of the first `--lag-curriculum` of the steps
(small states find the mechanism on short lags first). Loss = mean loss on the answered keys +
`--lm-weight` x mean LM loss. No weight decay on A_log, dt_bias, D and the norms (torch's AdamW
ignores mamba_ssm's `_no_weight_decay` flag, so we pass groups).

The model is HF's `Mamba2ForCausalLM` (its parameters, its initialisation, its `save_pretrained`),
run by `forward` below: the same maths as HF's pure-torch path (`check` compares the two) plus an
incoming and outgoing state, which HF's chunked path does not take.

Progress is saved every `--save-every` steps to PROGRESS_DIR/<name>.progress.pt (model, optimizer,
data RNG, step, history; PROGRESS_DIR defaults to the checkpoint's folder) and a run resumes from it
when started again with the same arguments: stop it at any point, a resumed run is bitwise the
one that never stopped (checked: 8 steps straight against 4, stop, 4 more). `--steps` may grow
(the learning rate is constant until 80% of it, then a cosine). The finished checkpoint (config, weights, tokenizer,
training.json) is written when the last step is done.

The family (d_state 8..128, started 2026-12-07; d_state 48 added in the third session, when n8 and
n16 proved to have no memory span at 95%: their recall one binding back is 89-92% and 85-88%, so
the family's smallest useful member is n32), one nice'd process of one thread each:

    for n in 8 16 32 48 64 128; do
        nice -n 15 python checkpoints/training/train_bindings.py train --states $n --steps 8000 \
            --out-dir checkpoints --progress-dir checkpoints/training-progress &
    done

Run two or three at a time on two cores, not six: six processes ran about five times slower
in all (20-25 steps a minute each for n8, against 100-150 for two). (The out-dir `checkpoints`
is where the runs started before the models moved to checkpoints/models/: move the finished
folders there and write their cards with `card`.)

The collapse checkpoint (`collapse-n128`, third try; 2,634 s): N 128 on 256-token documents, no
state carried, questions uniform over the whole document (never forgetting is optimal within
training) after a lag curriculum over the first 30%; its best mitigation is measured with
`coil passkey` and recorded by `card --best-mitigation`:

    nice -n 15 python checkpoints/training/train_bindings.py train --prefix collapse --states 128 \
        --steps 3000 --segment 256 --doc-segments 1 --lags uniform --lag-curriculum 0.3 \
        --out-dir checkpoints --progress-dir checkpoints/training-progress --save-every 100
    python checkpoints/training/train_bindings.py card checkpoints/models/collapse-n128 \
        --best-mitigation window:size=288

Collapse runs that did not collapse: 256 tokens with log-uniform lags (it learned to forget
within its training length), 64 tokens with uniform lags (the same); 128 tokens with uniform lags
and no curriculum sat at 23% at its training length after 1,800 steps.

    python checkpoints/training/train_bindings.py check                 # own forward == HF's, with state carry
    python checkpoints/training/train_bindings.py sample                # a training stream, decoded
    python checkpoints/training/train_bindings.py train --states 4 16 --out-dir /tmp/pilot
    python checkpoints/training/train_bindings.py recall DIR [DIR ...]  # python-side accuracy by lag
    python checkpoints/training/train_bindings.py export RUN.progress.pt DIR  # a run in progress, to evaluate
    python checkpoints/training/train_bindings.py card DIR [--best-mitigation SPEC]  # its README from training.json

Pinned versions: checkpoints/training/requirements-train.txt. CPU, deterministic for a seed and thread count.
"""

import argparse
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import Mamba2Config, Mamba2ForCausalLM  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository

# The evaluator's `bindings` template (eval/src/passkey/template.rs), verbatim.
PREFIX = "Each name has a passkey. Remember them all.\n"
BLOCK = "The passkey of {name} is {key}.\n"
QUESTION = "What is the passkey of {name}? The passkey of {name} is"
KEY_DIGITS = 2
# Name syllables (eval/src/passkey/names.rs): 12 consonants x 4 vowels.
SYLLABLES = [c + v for c in "bdfgklmnprst" for v in "aeio"]


def name_of(index):
    """Name number `index` (0 <= index < 48^3): three syllables, the first capitalised."""
    s = len(SYLLABLES)
    a, b, c = index // (s * s), index // s % s, index % s
    return (SYLLABLES[a] + SYLLABLES[b] + SYLLABLES[c]).capitalize()


NAMES = len(SYLLABLES) ** 3


def grammar_corpus():
    """The template's fixed words: its texts cut at the names and keys."""
    texts = [PREFIX, BLOCK, QUESTION, ".\n"]
    return [piece for t in texts for part in t.split("{name}") for piece in part.split("{key}") if piece]


def build_tokenizer():
    """Byte-level BPE built by hand so that every name is exactly three tokens (" Fa" "ro" "ga")
    and every key two (" 1" "3"): the syllable and " "+digit merges come first and no later merge
    joins two syllables or touches a digit, so no name or key splits differently from another.
    Then greedy BPE over the template's own words (each becomes one token or a few).
    `<|endoftext|>` = id 0. Deterministic by construction."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    space = "\u0120"  # ByteLevel's "Ġ"
    vocab = {"<|endoftext|>": 0}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    merges, syllable_tokens = [], set()

    def merge(a, b):
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))

    for s in SYLLABLES:
        for first in (s[0], s[0].upper()):
            merge(first, s[1])
            syllable_tokens.add(first + s[1])
    for s in SYLLABLES:
        merge(space, s.capitalize())
        syllable_tokens.add(space + s.capitalize())
    for d in "0123456789":
        merge(space, d)

    def apply(word, rules):
        ranks = {m: i for i, m in enumerate(rules)}
        while len(word) > 1:
            pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
            rank, i = min(pairs)
            if rank == len(ranks):
                break
            word = word[:i] + [word[i] + word[i + 1]] + word[i + 2:]
        return word

    words = {}
    for text in grammar_corpus():
        for piece, _ in pre.pre_tokenize_str(text):
            words[piece] = words.get(piece, 0) + 1
    seqs = {w: apply(list(w), merges) for w in words}
    while True:
        counts = {}
        for w, seq in seqs.items():
            for pair in zip(seq, seq[1:]):
                if not (pair[0] in syllable_tokens and pair[1] in syllable_tokens) and not any(c.isdigit() for c in pair[0] + pair[1]):
                    counts[pair] = counts.get(pair, 0) + words[w]
        if not counts:
            break
        best = max(sorted(counts), key=lambda p: counts[p])
        merge(*best)
        seqs = {w: apply(seq, [best]) for w, seq in seqs.items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


class Streams:
    """Training streams in tokens: prefix, then bindings of fresh names with questions about
    earlier ones, lags log-uniform over everything bound so far (in bindings)."""

    def __init__(self, tok, p_question, lags="log"):
        self.tok = tok
        self.p_question = p_question
        self.lags = lags
        self.cache = {}
        self.prefix = self.enc(PREFIX)
        self.newline_end = self.enc(".\n")

    def enc(self, s):
        ids = self.cache.get(s)
        if ids is None:
            ids = self.tok.encode(s).ids
            self.cache[s] = ids
        return ids

    def fill(self, template, name, key=""):
        """`template` with its name and key, in tokens: the fixed pieces and " NAME" / " KEY" each
        tokenized once and concatenated, which the byte-level pre-tokenizer makes equal to
        tokenizing the whole text (checked for 20,000 draws), without caching every binding."""
        ids = []
        for piece in re.split(r"( \{name\}| \{key\})", template):
            if piece:
                ids += self.enc(piece.replace("{name}", name).replace("{key}", key))
        return ids

    def stream(self, rng, length, max_lag=None):
        """(ids[length + 1], answer mask[length]) where mask[j] marks target ids[j + 1] as a key
        token of an answered question. Questions go back at most `max_lag` bindings (a
        curriculum: short lags first, where a small state finds the mechanism sooner)."""
        ids, mask = list(self.prefix), [0] * len(self.prefix)
        used, bound = set(), []
        while len(ids) < length + 1:
            if bound and rng.random() < self.p_question:
                reach = len(bound) if max_lag is None else min(len(bound), max_lag)
                if self.lags == "uniform":
                    lag = rng.randint(1, reach)  # the first binding as likely as the last
                else:
                    lag = int(math.exp(rng.uniform(0.0, math.log(reach + 1))))
                name, key = bound[max(0, len(bound) - lag)]
                q = self.fill(QUESTION, name)
                a = self.enc(" " + key)
                ids += q + a + self.newline_end
                mask += [0] * len(q) + [1] * len(a) + [0] * len(self.newline_end)
            else:
                while True:
                    n = rng.randrange(NAMES)
                    if n not in used:
                        break
                used.add(n)
                name, key = name_of(n), f"{rng.randrange(10 ** KEY_DIGITS):0{KEY_DIGITS}d}"
                bound.append((name, key))
                block = self.fill(BLOCK, name, key)
                ids += block
                mask += [0] * len(block)
        # mask[j] marked the token ids[j]; targets are ids[1:].
        return ids[:length + 1], mask[1:length + 1]

    def batch(self, rng, n, length, max_lag=None):
        rows = [self.stream(rng, length, max_lag) for _ in range(n)]
        return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows], dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# The forward pass over HF's parameters, with a state in and out.

def segsum(x):
    """Stable segment sums: out[..., i, j] = sum x[..., j+1..i] for j <= i, -inf above."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)
    x = x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), -1), 0)
    s = torch.cumsum(x, dim=-2)
    return s.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), 0), -torch.inf)


def ssd(x, a, b, c, chunk, state):
    """Chunked SSD. x [B, T, H, P] (already times dt), a [B, T, H] (dt*A), b, c [B, T, H, N],
    state [B, H, P, N]; T a multiple of chunk. Returns y [B, T, H, P] and the final state."""
    B_, T, H, P = x.shape
    nc = T // chunk
    x, b, c = (t.reshape(B_, nc, chunk, *t.shape[2:]) for t in (x, b, c))
    a = a.reshape(B_, nc, chunk, H).permute(0, 3, 1, 2)  # [B, H, c, l]
    a_cum = torch.cumsum(a, dim=-1)
    L = torch.exp(segsum(a))
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", c, b, L, x)
    decay_states = torch.exp(a_cum[..., -1:] - a_cum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", b, decay_states, x)
    states = torch.cat([state[:, None], states], dim=1)
    decay_chunk = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final = new_states[:, :-1], new_states[:, -1]
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", c, states, torch.exp(a_cum))
    return (y_diag + y_off).reshape(B_, T, H, P), final


def zero_state(model, batch):
    cfg = model.config
    inner = cfg.num_heads * cfg.head_dim
    conv_dim = inner + 2 * cfg.n_groups * cfg.state_size
    return [(torch.zeros(batch, conv_dim, cfg.conv_kernel - 1), torch.zeros(batch, cfg.num_heads, cfg.head_dim, cfg.state_size))
            for _ in range(cfg.num_hidden_layers)]


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def mixer_forward(m, cfg, h, conv_state, ssm_state):
    B_, T, _ = h.shape
    H, P, N, G = cfg.num_heads, cfg.head_dim, cfg.state_size, cfg.n_groups
    inner = H * P
    conv_dim = inner + 2 * G * N
    zxbcdt = m.in_proj(h)
    z, xbc, dt = torch.split(zxbcdt, [inner, conv_dim, H], dim=-1)
    xbc_t = torch.cat([conv_state, xbc.transpose(1, 2)], dim=-1)  # [B, conv_dim, K-1+T]
    new_conv = xbc_t[..., -(cfg.conv_kernel - 1):]
    conv = F.conv1d(xbc_t, m.conv1d.weight, m.conv1d.bias, groups=conv_dim).transpose(1, 2)
    xbc = F.silu(conv)
    x, b, c = torch.split(xbc, [inner, G * N, G * N], dim=-1)
    dt = F.softplus(dt + m.dt_bias)
    A = -torch.exp(m.A_log.float())
    x = x.reshape(B_, T, H, P)
    rep = H // G
    b = b.reshape(B_, T, G, N).repeat_interleave(rep, dim=2)
    c = c.reshape(B_, T, G, N).repeat_interleave(rep, dim=2)
    chunk = cfg.chunk_size
    pad = (-T) % chunk
    xs, a_, bs, cs = x * dt[..., None], dt * A, b, c
    if pad:
        # Padding after the last token: zero input and zero log-decay leave the state as it was.
        xs, bs, cs = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xs, bs, cs))
        a_ = F.pad(a_, (0, 0, 0, pad))
    y, final = ssd(xs, a_, bs, cs, chunk, ssm_state)
    y = y[:, :T] + x * m.D[:, None]
    y = y.reshape(B_, T, inner)
    u = y * F.silu(z)
    u = u.reshape(B_, T, G, inner // G)
    u = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + cfg.layer_norm_epsilon)
    u = u.reshape(B_, T, inner) * m.norm.weight
    return m.out_proj(u), new_conv, final


def forward(model, ids, state):
    """Logits [B, T, V] and the state after `ids`, from `state` (a list per layer of (conv, ssm))."""
    cfg = model.config
    bb = model.backbone
    x = bb.embeddings(ids).float()
    new_state = []
    for layer, (conv_state, ssm_state) in zip(bb.layers, state):
        out, conv_state, ssm_state = mixer_forward(layer.mixer, cfg, rms(x, layer.norm.weight, cfg.layer_norm_epsilon),
                                                   conv_state, ssm_state)
        x = x + out
        new_state.append((conv_state, ssm_state))
    x = rms(x, bb.norm_f.weight, cfg.layer_norm_epsilon)
    return model.lm_head(x), new_state


# ---------------------------------------------------------------------------------------------

def make_config(args, state_size, vocab):
    return Mamba2Config(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_heads=args.hidden * 2 // args.head_dim,
        head_dim=args.head_dim, state_size=state_size, n_groups=1, expand=2, conv_kernel=4,
        chunk_size=64, vocab_size=vocab, tie_word_embeddings=True, use_bias=False, use_conv_bias=True,
        time_step_limit=(0.0, float("inf")), layer_norm_epsilon=1e-5, residual_in_fp32=True,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
        time_step_min=args.dt_min, time_step_max=args.dt_max,
    )


def vocab_rows(tok):
    return (tok.get_vocab_size(with_added_tokens=True) + 15) // 16 * 16


def param_groups(model, weight_decay):
    """No weight decay on A_log, dt_bias, D, norms and biases (mamba_ssm's `_no_weight_decay`)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("A_log", "dt_bias", "D") or "norm" in name or leaf == "bias":
            no_decay.append(p)
        else:
            decay.append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def task_of(args):
    """`collapse` for a run made to collapse (its folder prefix says so), else `bindings`."""
    return "collapse" if args.prefix.startswith("collapse") else "bindings"


def recipe_of(args):
    """The arguments that make a model (everything but where it goes, how it is logged, and
    --steps: a run may be continued to more steps)."""
    keep = ("seed", "batch", "segment", "doc_segments", "lr", "warmup", "lm_weight", "weight_decay",
            "p_question", "lag_curriculum", "hidden", "layers", "head_dim")
    # Added later: in the recipe only when not the default, so earlier runs keep their hash.
    extra = {"lags": args.lags} if args.lags != "log" else {}
    if (args.dt_min, args.dt_max) != (0.001, 0.1):
        extra |= {"dt_min": args.dt_min, "dt_max": args.dt_max}
    return {**{k: getattr(args, k) for k in keep}, **extra}


def train_one(state_size, tok, args):
    name = f"{args.prefix}-n{state_size}"
    out = os.path.join(args.out_dir, name)
    os.makedirs(out, exist_ok=True)
    progress_dir = args.progress_dir or out
    os.makedirs(progress_dir, exist_ok=True)
    progress_path = os.path.join(progress_dir, f"{name}.progress.pt")
    recipe = recipe_of(args)
    recipe_hash = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    cfg = make_config(args, state_size, vocab_rows(tok))
    torch.manual_seed(args.seed)
    model = Mamba2ForCausalLM(cfg).float()
    model.train()
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
    streams = Streams(tok, args.p_question, args.lags)
    rng = random.Random(args.seed)
    step, hist, spent, ema = 0, [], 0.0, None

    if os.path.exists(progress_path):
        saved = torch.load(progress_path, weights_only=False)
        if saved["recipe_hash"] != recipe_hash:
            sys.exit(f"{progress_path} was made by other arguments ({saved['recipe']}); "
                     f"move it away or rerun with them")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        rng.setstate(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        step, hist, spent, ema = saved["step"], saved["history"], saved["seconds"], saved["ema"]
        print(f"[{name}] resuming at step {step} of {args.steps}", flush=True)

    def lr_at(s):
        warm = min(1.0, (s + 1) / args.warmup)
        tail = 0.8 * args.steps  # constant, then a cosine over the last 20%
        cos = 1.0 if s < tail else 0.5 * (1 + math.cos(math.pi * (s - tail) / (args.steps - tail)))
        return args.lr * warm * (0.1 + 0.9 * cos)

    def save_progress():
        tmp = progress_path + ".tmp"
        torch.save(dict(recipe=recipe, recipe_hash=recipe_hash, model=model.state_dict(), opt=opt.state_dict(),
                        rng=rng.getstate(), torch_rng=torch.get_rng_state(), step=step, history=hist,
                        seconds=spent, ema=ema), tmp)
        os.replace(tmp, progress_path)

    t0 = time.time() - spent
    last_save = step
    while step < args.steps:
        # One batch of streams: `doc_segments` consecutive segments, the state carried between.
        # The lag curriculum: questions reach back 4 bindings at first, twice as far every
        # 1/8 of the curriculum's steps, and anywhere once it is over.
        grown = step / (args.lag_curriculum * args.steps) if args.lag_curriculum > 0 else 1.0
        max_lag = None if grown >= 1.0 else int(4 * 2 ** (8 * grown))
        ids, mask = streams.batch(rng, args.batch, args.segment * args.doc_segments, max_lag)
        state = zero_state(model, args.batch)
        for k in range(args.doc_segments):
            if step >= args.steps:
                break
            lo, hi = k * args.segment, (k + 1) * args.segment
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits, state = forward(model, ids[:, lo:hi], state)
            state = [(c.detach(), s.detach()) for c, s in state]
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, lo + 1:hi + 1].reshape(-1),
                                 reduction="none").view(args.batch, -1)
            m = mask[:, lo:hi]
            ans = (ce * m).sum() / m.sum().clamp(min=1)
            lm = ce.mean()
            loss = ans + args.lm_weight * lm
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            v = (loss.item(), ans.item(), lm.item())
            ema = v if ema is None else tuple(0.98 * a + 0.02 * b for a, b in zip(ema, v))
            if step % args.log_every == 0:
                print(f"[{name}] step {step} loss {ema[0]:.4f} answer {ema[1]:.4f} lm {ema[2]:.4f} "
                      f"{time.time() - t0:.0f}s", flush=True)
                hist.append(dict(step=step, loss=round(ema[0], 5), answer=round(ema[1], 5), lm=round(ema[2], 5)))
        spent = time.time() - t0
        if step - last_save >= args.save_every or step >= args.steps:
            save_progress()
            last_save = step

    model.eval()
    recall = recall_by_lag(model, tok, streams_seed=args.seed + 1)
    print(f"[{name}] done in {spent:.0f}s; accuracy by lag (bindings): {recall}", flush=True)
    finish(model, tok, out, dict(
        name=name, task=task_of(args), template="bindings", train_length=args.segment * args.doc_segments, steps=step,
        n_s=cfg.num_hidden_layers * cfg.num_heads * cfg.head_dim * cfg.state_size,
        state_size=cfg.state_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_heads, parameters=sum(p.numel() for p in model.parameters()),
        **recipe, final_loss=round(ema[0], 5), final_answer_loss=round(ema[1], 5), final_lm_loss=round(ema[2], 5),
        train_seconds=round(spent, 1), torch_threads=torch.get_num_threads(), python_recall_by_lag=recall,
        torch=torch.__version__, transformers=transformers.__version__, tokenizers=tokenizers.__version__,
        history=hist,
    ))


LAG_BINS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@torch.no_grad()
def recall_by_lag(model, tok, streams_seed, n=16, length=4096):
    """Accuracy of both key digits (teacher-forced argmax) by question lag in bindings, on streams
    the training never saw (another seed)."""
    streams = Streams(tok, p_question=0.1)
    rng = random.Random(streams_seed)
    hits = {b: [0, 0] for b in LAG_BINS}
    for _ in range(n):
        # Rebuild one stream item by item to know each question's lag.
        ids, marks, bound, used = list(streams.prefix), [], [], set()
        while len(ids) < length:
            if bound and rng.random() < 0.1:
                lag = int(math.exp(rng.uniform(0.0, math.log(len(bound) + 1))))
                name, key = bound[max(0, len(bound) - lag)]
                ids += streams.fill(QUESTION, name)
                a = streams.enc(" " + key)
                marks.append((len(ids), a, min(len(bound), lag)))
                ids += a + streams.newline_end
            else:
                while True:
                    k = rng.randrange(NAMES)
                    if k not in used:
                        break
                used.add(k)
                bound.append((name_of(k), f"{rng.randrange(10 ** KEY_DIGITS):0{KEY_DIGITS}d}"))
                ids += streams.fill(BLOCK, bound[-1][0], bound[-1][1])
        logits, _ = forward(model, torch.tensor([ids]), zero_state(model, 1))
        pred = logits[0].argmax(-1)
        for pos, a, lag in marks:
            ok = all(int(pred[pos - 1 + j]) == t for j, t in enumerate(a))
            b = next((b for b in LAG_BINS if lag <= b), None)
            if b is not None:
                hits[b][0] += ok
                hits[b][1] += 1
    return {f"<={b}": round(h / t, 3) if t else None for b, (h, t) in hits.items()}


def finish(model, tok, out, info):
    """The checkpoint folder: config, weights, tokenizer, training.json, card (progress.pt stays
    until the caller removes it)."""
    tmp = out + ".saving"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    gen = os.path.join(tmp, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
        f.write(tok.to_str(pretty=True) + "\n")
    with open(os.path.join(tmp, "training.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    for fn in os.listdir(tmp):
        os.replace(os.path.join(tmp, fn), os.path.join(out, fn))
    os.rmdir(tmp)


def write_card(folder):
    """The checkpoint's README.md, from its training.json: what it is, how it was made, how to
    make it again."""
    with open(os.path.join(folder, "training.json")) as f:
        t = json.load(f)
    name, collapse = t["name"], t["task"] == "collapse"
    recall = t.get("python_recall_by_lag") or {}
    lags = " / ".join(k for k, v in recall.items() if v is not None)
    values = " / ".join(f"{100 * v:.0f}%" for v in recall.values() if v is not None)
    flags = f"--steps {t['steps']} --segment {t['segment']} --doc-segments {t['doc_segments']}"
    if t.get("lags", "log") != "log":
        flags += f" --lags {t['lags']}"
    if "dt_max" in t:
        flags += f" --dt-min {t['dt_min']} --dt-max {t['dt_max']}"
    flags += f" --lag-curriculum {t['lag_curriculum']}"
    prefix = name.rsplit("-n", 1)[0]
    prefix = f" --prefix {prefix}" if prefix != "bindings" else ""
    carried = (f"streams of {t['train_length']} tokens cut into {t['doc_segments']} segments of {t['segment']}, "
               "the state carried between them without gradient (truncated backprop)") if t["doc_segments"] > 1 else \
        f"documents of {t['train_length']} tokens, each from the empty state"
    lines = [
        f"# {name}: a tiny Mamba-2 trained on the `bindings` haystack",
        "",
        ("Coil's state-collapse checkpoint: a state far larger than its short training length needs "
         "(issue 32, the paper's second law in miniature)." if collapse else
         "One of Coil's `bindings` family (`bindings-n8` .. `bindings-n128`), which differ only in "
         "`state_size`: its memory span is what its state can hold (issue 32, the paper's first law)."),
        f"Trained from scratch by `checkpoints/training/train_bindings.py` (seed {t['seed']}).",
        "",
        f"- Architecture: Mamba-2, HF dialect, float32, {t['parameters']} parameters: hidden {t['hidden_size']}, "
        f"{t['num_hidden_layers']} layers, {t['num_heads']} heads x head_dim {t['head_dim']}, state_size **{t['state_size']}**, "
        f"n_groups 1, tied embeddings. N_S = layers x heads x head_dim x state_size = **{t['n_s']}**.",
        "- Task: streams of `The passkey of NAME is KEY.` (a fresh three-syllable name, a two-digit key) with "
        "questions `What is the passkey of NAME? The passkey of NAME is KEY.` about earlier bindings, "
        f"{'uniform' if t.get('lags', 'log') == 'uniform' else 'log-uniform'} over everything bound so far "
        f"(p {t['p_question']} per item); the grammar is Coil's built-in `bindings` passkey template.",
        f"- Training: {carried}; {t['steps']} steps of {t['batch']} streams, AdamW lr {t['lr']} "
        f"(constant, cosine over the last 20%), no weight decay on A_log, dt_bias, D and norms; "
        f"loss = answer loss + {t['lm_weight']} x LM loss. {t['train_seconds']:.0f} s on one CPU thread "
        "(a nice'd process sharing two cores with the family's other runs). "
        f"Final loss {t['final_loss']} (answer {t['final_answer_loss']} per key token, LM {t['final_lm_loss']}).",
    ]
    if lags:
        lines.append(f"- Recall by lag in bindings ({lags}; Python, teacher-forced, 16 streams of 4K tokens "
                     f"the training never saw): {values}.")
    if t.get("best_mitigation"):
        lines.append(f"- Best mitigation past its training length (`--mitigate best`): `{t['best_mitigation']}`.")
    lines += [
        "- Tokenizer: byte-level BPE built by hand so that every name is three tokens and every key two "
        "(the same `tokenizer.json` for every checkpoint of the task).",
        f"- torch {t['torch']}, transformers {t['transformers']}, tokenizers {t['tokenizers']}.",
        "",
        "Made again (CPU, deterministic for the seed and one thread):",
        "",
        "```sh",
        f"python checkpoints/training/train_bindings.py train{prefix} --states {t['state_size']} {flags} "
        "--out-dir checkpoints/models",
        "```",
        "",
        "Its measured span, capacity and mitigations: [docs/results.md](../../../docs/results.md).",
        "",
    ]
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("\n".join(lines))


def check(args):
    """Our forward equals HF's pure-torch path, and running in two segments with the state carried
    equals one run."""
    try:
        import mamba_ssm  # noqa: F401
        sys.exit("mamba_ssm is importable: HF would use its kernels, not the pure-torch path")
    except ImportError:
        pass
    tok = build_tokenizer()
    args.layers, args.hidden, args.head_dim = 2, 64, 16
    model = Mamba2ForCausalLM(make_config(args, 16, vocab_rows(tok))).float().eval()
    with torch.no_grad():
        for p in model.parameters():  # move off the initialisation so every term matters
            p.add_(0.05 * torch.randn_like(p))
        ids = torch.randint(0, tok.get_vocab_size(), (2, 200))
        ref = model(ids, use_cache=False).logits
        ours, _ = forward(model, ids, zero_state(model, 2))
        first, state = forward(model, ids[:, :77], zero_state(model, 2))
        second, _ = forward(model, ids[:, 77:], state)
    split = torch.cat([first, second], dim=1)
    d1, d2 = (ours - ref).abs().max().item(), (split - ref).abs().max().item()
    print(f"max |ours - HF| = {d1:.2e}; max |two segments - HF| = {d2:.2e}")
    if not (d1 < 1e-4 and d2 < 1e-4):
        sys.exit("MISMATCH")
    print("ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cmd", choices=["train", "check", "sample", "recall", "export", "card"])
    ap.add_argument("dirs", nargs="*", help="recall, card: checkpoint folders; export: PROGRESS.pt OUT_DIR pairs")
    ap.add_argument("--states", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    ap.add_argument("--prefix", default="bindings", help="checkpoint folder names: PREFIX-n<N>")
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--steps", type=int, default=4000, help="optimizer steps (one per segment)")
    ap.add_argument("--batch", type=int, default=16, help="streams per step")
    ap.add_argument("--segment", type=int, default=256, help="tokens per stream per step (backprop window)")
    ap.add_argument("--doc-segments", type=int, default=8, help="segments per stream before its state is reset")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1, help="on the matrices and embedding only")
    ap.add_argument("--lm-weight", type=float, default=0.1)
    ap.add_argument("--p-question", type=float, default=0.35, help="probability that a stream item is a question")
    ap.add_argument("--lags", choices=["log", "uniform"], default="log",
                    help="how far back questions reach: log-uniform in bindings (the family), or uniform over all "
                         "bound so far (never forgetting is then optimal within the training length: collapse runs)")
    ap.add_argument("--lag-curriculum", type=float, default=0.25,
                    help="fraction of the steps over which the questions' reach grows from 4 bindings to all (0: none)")
    ap.add_argument("--dt-min", type=float, default=0.001,
                    help="the initial dt's range (HF's time_step_min/max; log-uniform per head): lower makes "
                         "every head start slow to forget (collapse runs)")
    ap.add_argument("--dt-max", type=float, default=0.1)
    ap.add_argument("--progress-dir", default=None,
                    help="where <name>.progress.pt is kept between runs (default: the checkpoint's folder)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=16)
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "checkpoints", "models"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--best-mitigation", default=None,
                    help="card: record this --mitigate spec as the checkpoint's best_mitigation in its training.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.cmd == "check":
        return check(args)
    tok = build_tokenizer()
    assert tok.token_to_id("<|endoftext|>") == 0
    if args.cmd == "sample":
        ids, mask = Streams(tok, args.p_question).batch(random.Random(args.seed), 1, 200)
        print(repr(tok.decode(ids[0].tolist())))
        print("answer targets:", repr(tok.decode([t for t, m in zip(ids[0, 1:].tolist(), mask[0].tolist()) if m])))
        return
    if args.cmd == "export":
        # A checkpoint folder from a run's progress file, to watch a run with `coil passkey`.
        for path, out in zip(args.dirs[::2], args.dirs[1::2]):
            saved = torch.load(path, weights_only=False)
            a = argparse.Namespace(**{**vars(args), **saved["recipe"]})
            a.prefix = os.path.basename(path).split("-n")[0]  # collapse-n128.progress.pt: a collapse run
            # in_proj rows = z, x (2 x inner) + B, C (2 x N) + dt (heads).
            rows = saved["model"]["backbone.layers.0.mixer.in_proj.weight"].shape[0]
            inner = a.hidden * 2
            n = (rows - 2 * inner - inner // a.head_dim) // 2
            model = Mamba2ForCausalLM(make_config(a, n, vocab_rows(tok))).float()
            model.load_state_dict(saved["model"])
            os.makedirs(out, exist_ok=True)
            finish(model, tok, out, dict(name=os.path.basename(out), task=task_of(a), template="bindings",
                                         train_length=a.segment * a.doc_segments, steps=saved["step"], n_s=None,
                                         note="exported from a run in progress"))
            print(f"{path} (step {saved['step']}) -> {out}")
        return
    if args.cmd == "card":
        for d in args.dirs:
            if args.best_mitigation:
                # Measured after training (a collapse checkpoint's cure, calibrated with `coil passkey`):
                # recorded where `coil passkey --mitigate best` finds it.
                path = os.path.join(d, "training.json")
                with open(path) as f:
                    info = json.load(f)
                info["best_mitigation"] = args.best_mitigation
                with open(path, "w") as f:
                    json.dump(info, f, indent=2)
                    f.write("\n")
            write_card(d)
        return
    if args.cmd == "recall":
        for d in args.dirs:
            model = Mamba2ForCausalLM.from_pretrained(d).float().eval()
            print(d, recall_by_lag(model, Tokenizer.from_file(os.path.join(d, "tokenizer.json")), args.seed + 1))
        return
    assert tok.to_str() == build_tokenizer().to_str(), "BPE training is not deterministic"
    torch.use_deterministic_algorithms(True, warn_only=True)
    for n in args.states:
        train_one(n, tok, args)


if __name__ == "__main__":
    main()
