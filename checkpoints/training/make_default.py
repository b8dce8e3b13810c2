#!/usr/bin/env python3
"""Generate checkpoints/models/default/: Coil's tiny embedded default Mamba-2 checkpoint.

Random (perturbed) weights in the HF dialect + a byte-level BPE tokenizer.json trained here on the
small English text below. It is a placeholder that lets every code path run end to end until
trained checkpoints exist; its outputs are meaningless.

Run by hand from the repository root (same venv as the fixtures):

    /work/venv-ref/bin/pip install -r tests/fixtures/requirements.txt
    /work/venv-ref/bin/python checkpoints/training/make_default.py

Deterministic: a rerun with the same library versions rewrites identical files.
"""

import importlib.util
import json
import os
import shutil

os.environ["TOKENIZERS_PARALLELISM"] = "false"

import torch  # noqa: E402
import transformers  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import Mamba2Config, Mamba2ForCausalLM  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
OUT = os.path.join(ROOT, "checkpoints", "models", "default")
SEED = 20240531

# Reuse the fixtures' weight perturbation (same distributions as tests/fixtures).
_spec = importlib.util.spec_from_file_location("make_fixtures", os.path.join(ROOT, "tests", "fixtures",
                                                                             "make_fixtures.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

# Passkey template of docs long-context.md (Stuffed Mamba), verbatim.
PASSKEY_PREFIX = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it.\n\n"
PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
PASSKEY_NEEDLE = "The passkey is {k}. Remember it. {k} is the passkey.\n"
PASSKEY_SUFFIX = "\nWhat is the pass key? The passkey is"

ENGLISH = """\
Coil is a small inference engine for state space language models. It reads a checkpoint, builds the
layers, and runs them on a stream of tokens. A state space model keeps a fixed amount of memory no
matter how long the text is. Each new token updates the state, and the state is all the model knows
about the past. This makes long texts cheap to read, but it also means the model must decide what to
keep and what to forget.

The river ran past the old mill and under the stone bridge. In the morning the water was cold and
clear, and by noon the children came down to the bank to throw stones. Their mother called them back
for lunch, but they did not hear her over the sound of the water. When the sun went down the birds
returned to the trees, and the village was quiet again until the next day.

Once upon a time there was a little house at the edge of a forest. A woman lived there with her cat
and her three hens. Every day she walked to the market to sell eggs, and every evening she walked
home again with bread, cheese, and a story for the cat. The cat never said a word, but it always
listened, and that was enough for her.

To make a cup of tea, boil some water, warm the pot, and add one spoon of leaves for each person and
one for the pot. Pour the water, wait three or four minutes, and then pour the tea into the cups. Some
people like milk and sugar; others like lemon; some like it plain. There is no wrong way to drink tea,
as long as you enjoy it.

The numbers from one to ten are 1, 2, 3, 4, 5, 6, 7, 8, 9 and 10. The year has 12 months, 52 weeks and
365 days, or 366 in a leap year. A day has 24 hours, an hour has 60 minutes, and a minute has 60
seconds. The meeting starts at 09:30 and ends at 11:45. Call 555 0123 before 2024 ends. Room 404 is on
the fourth floor, and the price is 19.99 dollars. The code 73819 opens the door, and 20481 opens the gate.

Questions and answers. What is the capital of France? The capital of France is Paris. What color is
the sky? The sky is blue. What do cows drink? Cows drink water. Where is the key? The key is under the
mat. Who wrote the letter? The letter was written by an old friend who lives far away.

The engine can read a prompt, generate new text, and report how well the model predicts a file. It
can also measure the state of each layer and each head as the text grows, so that one can see when
a model starts to forget too little or too much. These measurements are written to a file and can be
plotted later. A good model remembers the important parts and lets the rest fade away.

In the garden there are roses, tulips and daisies. The gardener waters them in the evening when the
air is cool. In spring the trees are full of white flowers, in summer the grass is green and long, in
autumn the leaves turn red and yellow, and in winter everything is covered with snow.
"""


def corpus():
    parts = [ENGLISH, PASSKEY_PREFIX + PASSKEY_FILLER * 3 + PASSKEY_NEEDLE.format(k="48213")
             + PASSKEY_FILLER * 2 + PASSKEY_SUFFIX + " 48213.\n"]
    for k in ("00000", "12345", "67890", "55511", "90317"):
        parts.append(PASSKEY_PREFIX + PASSKEY_FILLER + PASSKEY_NEEDLE.format(k=k) + PASSKEY_FILLER
                     + PASSKEY_SUFFIX + f" {k}.\n")
    return "".join(parts)


def train_tokenizer(text):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=500,  # not a multiple of 16, so the padded config vocab (512) has padding rows
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    return tok


def main():
    text = corpus()
    tok = train_tokenizer(text)
    js = tok.to_str(pretty=True)
    assert train_tokenizer(text).to_str(pretty=True) == js, "BPE training is not deterministic"
    assert tok.token_to_id("<|endoftext|>") == 0
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    vocab = (n_tok + 15) // 16 * 16
    # Sanity: digits are single tokens, and encode/decode round-trips.
    sample = PASSKEY_NEEDLE.format(k="90317")
    enc = tok.encode(sample)
    assert tok.decode(enc.ids) == sample, (tok.decode(enc.ids), sample)
    assert all(t in enc.tokens for t in "90317")

    cfg = dict(fx.BASE, chunk_size=64, vocab_size=vocab)
    torch.manual_seed(SEED)
    model = Mamba2ForCausalLM(fx.make_config(cfg)).float()
    fx.perturb(model, torch.Generator().manual_seed(SEED))
    model.eval()

    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    model.save_pretrained(OUT, safe_serialization=True)
    with open(os.path.join(OUT, "tokenizer.json"), "w") as f:
        f.write(js)
        f.write("\n")

    reloaded = Mamba2ForCausalLM.from_pretrained(OUT, dtype=torch.float32).eval()
    fx.assert_same_weights(model, reloaded, "default")
    back = Tokenizer.from_file(os.path.join(OUT, "tokenizer.json"))
    assert back.encode(sample).ids == enc.ids
    ids = torch.tensor(enc.ids, dtype=torch.int64)
    with torch.no_grad():
        logits = reloaded(ids[None], use_cache=False).logits[0]
        greedy = reloaded.generate(ids[None], max_new_tokens=8, do_sample=False)[0, len(ids):]
    c = reloaded.config
    card = f"""# Coil default checkpoint (random weights)

**This is NOT a trained model.** Its weights are random (seeded, perturbed so every parameter is
non-trivial); it exists so that Coil can run every code path end to end without downloading
anything. Its text output is gibberish. It is a placeholder until trained checkpoints exist.

- Architecture: Mamba-2, HF transformers dialect (`Mamba2ForCausalLM.save_pretrained`), float32.
- hidden {c.hidden_size}, layers {c.num_hidden_layers}, heads {c.num_heads} x head_dim {c.head_dim},
  state {c.state_size}, n_groups {c.n_groups}, conv kernel {c.conv_kernel}, expand {c.expand},
  chunk {c.chunk_size}, tied embeddings, vocab_size {c.vocab_size} (tokenizer has {n_tok} entries,
  rounded up to a multiple of 16; rows past {n_tok - 1} are padding).
- Tokenizer: byte-level BPE (`tokenizer.json`, Python `tokenizers` {tokenizers.__version__}) trained on
  a few KB of English written in `checkpoints/training/make_default.py`, including the passkey template of
  the long-context design doc. Pre-tokenizer: Digits(individual_digits=true) then ByteLevel, so
  every digit is its own token. `<|endoftext|>` is id 0 (bos = eos = pad = 0).
- Made by `checkpoints/training/make_default.py` (seed {SEED}) with torch {torch.__version__},
  transformers {transformers.__version__}. Regenerate with
  `/work/venv-ref/bin/python checkpoints/training/make_default.py`.
- Check value: for the prompt {json.dumps(sample)} ({len(ids)} tokens), HF's last-position logits
  have max |.| {logits[-1].abs().max().item():.4f}, argmax {int(logits[-1].argmax())}; HF greedy decode
  of 8 tokens gives ids {greedy.tolist()}.
"""
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(card)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"tokenizer entries {n_tok}, vocab_size {vocab}, files {sorted(os.listdir(OUT))}, "
          f"total {total / 1024:.0f} KiB")
    print("sample tokens:", enc.tokens)


if __name__ == "__main__":
    main()
