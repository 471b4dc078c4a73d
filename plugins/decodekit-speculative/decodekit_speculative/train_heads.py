"""Fit draft heads (Medusa or Hydra) for a causal LM by self-distillation.

    python -m decodekit_speculative.train_heads --model smollm2-135m --out DIR \\
        [--heads 3] [--kind medusa|hydra] [--prompts 320] [--tokens-per-prompt 96] [--epochs 3] [--seed 0]

1. **Data.** ``--prompts`` prompts are drawn (with ``--seed``) from a built-in list of varied
   requests (chat, explanations, lists, code, maths, JSON, rewriting / summarising / copying a
   given text) and encoded as the pipeline would encode them (chat template when the tokenizer has
   one). The model continues them greedily, ``--gen-batch`` prompts per batch, for up to
   ``--tokens-per-prompt`` tokens or EOS, through the host's own :class:`decodekit.kv.CachedLM`.
   Each step also yields, for free, the last hidden state ``h_t`` (the LM head's input, caught by
   :class:`~decodekit_speculative.heads.HiddenCapture`) whose next token is the one just chosen.
2. **Targets.** For position ``t`` the LM head gives ``x_{t+1}``; head ``k`` (1-based) is trained
   to predict ``x_{t+k+1}``, the model's *own* greedy token (cross-entropy); Hydra heads are teacher
   forced with the embeddings of ``x_{t+1} .. x_{t+k}``. Head ``k``'s loss is weighted ``0.8^(k-1)``.
3. **Fit.** AdamW, cosine learning rate with warm-up, over ``--epochs`` passes; the LM head and
   embeddings are the model's own and stay frozen. 5 % of the prompts are held out; their
   per-head, per-rank top-k accuracies are saved (the proposer's acceptance priors).

Writes ``heads.safetensors`` (bf16 head weights only: the LM head is shared, not copied) and
``heads.json`` (config, accuracies, timings and the exact command) into ``--out``.
"""

from __future__ import annotations

import argparse
import math
import random
import shlex
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from decodekit_speculative.heads import DraftHeads, HiddenCapture, save_heads

LOSS_DECAY = 0.8
ACC_RANKS = 16      # ranks kept in the accuracy table
HOLDOUT = 0.05      # share of prompts held out for the accuracy table

# -- the built-in prompts ------------------------------------------------------------------------

TOPICS = [
    "photosynthesis", "the water cycle", "black holes", "the French Revolution", "volcanoes",
    "machine learning", "the immune system", "climate change", "the Roman Empire", "electric cars",
    "coffee", "honeybees", "the internet", "vaccines", "earthquakes", "chess", "the Moon landing",
    "renewable energy", "sleep", "dinosaurs", "the stock market", "recycling", "DNA", "rainbows",
    "the printing press", "gravity", "octopuses", "jazz music", "the Great Wall of China", "bread baking",
    "time zones", "plate tectonics", "social media", "the human heart", "glaciers", "bicycles",
    "the Olympic Games", "antibiotics", "solar panels", "penguins",
]
TEMPLATES = [
    "Explain {t} to a ten-year-old.",
    "Write a short paragraph about {t}.",
    "What are three interesting facts about {t}?",
    "Give me a list of five questions a student might ask about {t}.",
    "Write a haiku about {t}.",
    "Summarise the history of {t} in a few sentences.",
    "What are the advantages and disadvantages of {t}?",
    "Write a short story that involves {t}.",
    "Describe {t} in simple words.",
    "How would you teach a class about {t}?",
    "Write a tweet about {t}.",
    "Give me a JSON object describing {t} with keys name, category and summary.",
    "What is a common misconception about {t}?",
    "Write a short poem about {t}.",
    "Create a multiple-choice quiz question about {t}.",
    "Why is {t} important?",
]
PASSAGES = [
    "The library opens at nine in the morning and closes at six in the evening. On Saturdays it "
    "closes early, at two. Members may borrow up to five books for three weeks.",
    "Our team finished the project two days ahead of schedule. The client liked the new design, "
    "but asked for a darker colour scheme and a larger font on the main page.",
    "To make pancakes, mix two cups of flour, two eggs, a cup of milk and a pinch of salt. Heat a pan, "
    "add a little butter and pour in a ladle of batter. Flip when bubbles appear.",
    "The river flooded after three days of heavy rain. Several roads were closed and the school "
    "moved its classes online until the water went down.",
    "Please remember that the meeting has moved from Tuesday to Thursday at ten. Bring your notes "
    "from last week and the updated budget figures.",
    "Cats sleep for twelve to sixteen hours a day. They are most active at dawn and dusk, when "
    "their wild ancestors hunted small animals.",
    "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n    return total / len(values)\n",
    "def greet(name):\n    message = 'Hello, ' + name + '!'\n    print(message)\n    return message\n",
]
TEXT_TEMPLATES = [
    "Repeat the following text exactly:\n\n{p}",
    "Summarise this in one sentence:\n\n{p}",
    "Rewrite this text in a more formal tone:\n\n{p}",
    "List the key points of this text:\n\n{p}",
    "Translate this text into French:\n\n{p}",
    "Fix any spelling mistakes and output the whole text:\n\n{p}",
]
FREE = [
    "What is 15 times 12? Show your work.",
    "Write a Python function that checks whether a number is prime.",
    "Write a Python function that reverses a string.",
    "Write a SQL query that counts the orders per customer.",
    "List the days of the week in French.",
    "What is the capital of Australia?",
    "Give me a recipe for a simple tomato soup.",
    "How do I make a good first impression at a job interview?",
    "What should I pack for a weekend camping trip?",
    "Write an email to my landlord asking to fix the heating.",
    "Tell me a joke about programmers.",
    "Convert 100 degrees Fahrenheit to Celsius.",
    "What is the difference between a list and a tuple in Python?",
    "Give me three tips for learning a new language.",
    "Write a short dialogue between a customer and a waiter.",
    "How many minutes are there in a week?",
    "Write a limerick about a cat.",
    "Explain what a for loop is.",
    "Count from one to twenty in words.",
    "What are the planets of the solar system, in order?",
    "Write a JavaScript function that adds two numbers.",
    "Suggest five names for a bakery.",
    "What is the Pythagorean theorem?",
    "Write a thank-you note to a teacher.",
]


def builtin_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` prompts drawn without repetition (while they last) from the built-in pool."""
    pool = ([t.format(t=topic) for t in TEMPLATES for topic in TOPICS]
            + [t.format(p=p) for t in TEXT_TEMPLATES for p in PASSAGES] + FREE)
    rng = random.Random(seed)
    rng.shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


# -- data: the model's own greedy continuations and hidden states -----------------------------------

@torch.inference_mode()
def collect(model: torch.nn.Module, prompts: list[list[int]], max_new: int, eos: set[int], pad_token_id: int,
            batch_size: int = 32, progress: Callable[[int], None] | None = None
            ) -> list[tuple[torch.Tensor, list[int]]]:
    """Greedy continuations: per prompt ``(H [T, d], tokens [T])``, ``H[i]`` the hidden state
    whose LM-head output chose ``tokens[i]`` (``H[0]``: at the prompt's last token)."""
    from decodekit.kv import CachedLM

    capture = HiddenCapture(model)
    out: list[tuple[torch.Tensor, list[int]]] = [None] * len(prompts)  # type: ignore[list-item]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths batch together
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            B = len(idx)
            lm = CachedLM(model, B, pad_token_id)
            pending = [list(prompts[i]) for i in idx]
            hs: list[list[torch.Tensor]] = [[] for _ in range(B)]
            toks: list[list[int]] = [[] for _ in range(B)]
            done = [False] * B
            for _ in range(max_new):
                capture.arm()
                logits = lm.forward(pending)[:, -1]  # [B, V]
                lm.commit([[] for _ in range(B)])
                h = capture.take()[:B, -1].float().cpu()  # [B, d]
                nxt = logits.argmax(dim=-1).tolist()
                for b in range(B):
                    if not done[b]:
                        hs[b].append(h[b])
                        toks[b].append(nxt[b])
                        done[b] = nxt[b] in eos
                if progress is not None:
                    progress(B)
                if all(done):
                    break
                pending = [[t] for t in nxt]
            for b, i in enumerate(idx):
                out[i] = (torch.stack(hs[b]), toks[b])
    finally:
        capture.close()
    return out


def examples(seqs: list[tuple[torch.Tensor, list[int]]], K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``H [n, d]`` and ``X [n, K + 1]``: ``X[i, k] = x_{t+1+k}`` (-100 past the sequence's end)."""
    Hs, Xs = [], []
    for H, toks in seqs:
        T = len(toks)
        X = torch.full((T, K + 1), -100, dtype=torch.long)
        for k in range(K + 1):
            if k < T:
                X[:T - k, k] = torch.tensor(toks[k:])
        keep = (X[:, 1] >= 0) if K >= 1 else torch.ones(T, dtype=torch.bool)  # a target for head 1
        Hs.append(H[keep])
        Xs.append(X[keep])
    d = seqs[0][0].shape[-1] if seqs else 0
    if not Hs:
        return torch.zeros(0, d), torch.zeros(0, K + 1, dtype=torch.long)
    return torch.cat(Hs), torch.cat(Xs)


# -- fitting -------------------------------------------------------------------------------------

def head_logits(heads: DraftHeads, model: torch.nn.Module, H: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``[n, K, V]`` logits of every head (Hydra teacher-forced with ``X[:, :K]``)."""
    W = model.get_output_embeddings()
    prev = None
    if heads.kind == "hydra":
        prev = model.get_input_embeddings()(X[:, :heads.num_heads].clamp(min=0)).detach().float()  # [n, K, d]
    S = heads.states(H, prev)  # [n, K, d]
    return F.linear(S, W.weight.detach().float(), None if W.bias is None else W.bias.detach().float())


def fit(heads: DraftHeads, model: torch.nn.Module, H: torch.Tensor, X: torch.Tensor, *, epochs: int,
        batch_size: int, lr: float, seed: int, progress: Callable[[int, dict[str, float]], None] | None = None
        ) -> list[float]:
    """AdamW with warm-up and cosine decay; returns the mean loss of each epoch."""
    K = heads.num_heads
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=0.0)
    steps = max(1, epochs * math.ceil(len(H) / batch_size))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    weights = [LOSS_DECAY ** k for k in range(K)]
    losses = []
    heads.train()
    for _ in range(epochs):
        perm = torch.randperm(len(H), generator=g)
        total, count = 0.0, 0
        for s in range(0, len(H), batch_size):
            i = perm[s:s + batch_size]
            x = X[i]
            logits = head_logits(heads, model, H[i], x)  # [n, K, V]
            # mean cross-entropy per head over the positions that have its target (-100: none)
            per_head = [F.cross_entropy(logits[:, k], x[:, k + 1], ignore_index=-100, reduction="sum")
                        / (x[:, k + 1] >= 0).sum().clamp(min=1) for k in range(K)]
            loss = sum(w * lh for w, lh in zip(weights, per_head)) / sum(weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + float(loss.detach()) * len(i), count + len(i)
            if progress is not None:
                progress(len(i), {f"loss{k + 1}": float(lh.detach()) for k, lh in enumerate(per_head)})
        losses.append(total / max(count, 1))
    heads.eval()
    return losses


@torch.no_grad()
def accuracy(heads: DraftHeads, model: torch.nn.Module, H: torch.Tensor, X: torch.Tensor,
             ranks: int = ACC_RANKS, batch_size: int = 256) -> list[list[float]]:
    """``acc[k][r]``: share of positions where head ``k + 1``'s rank-``r`` token is the target."""
    K = heads.num_heads
    r = min(ranks, model.get_output_embeddings().weight.shape[0])
    hits = torch.zeros(K, r)
    counts = torch.zeros(K)
    for s in range(0, len(H), batch_size):
        x = X[s:s + batch_size]
        top = head_logits(heads, model, H[s:s + batch_size], x).topk(r, dim=-1).indices  # [n, K, r]
        tgt = x[:, 1:K + 1]  # [n, K]
        valid = tgt >= 0
        hits += ((top == tgt[..., None]) & valid[..., None]).sum(dim=0).float()
        counts += valid.sum(dim=0).float()
    return (hits / counts.clamp(min=1)[:, None]).tolist()


# -- the command ---------------------------------------------------------------------------------

def train(model: torch.nn.Module, tokenizer: Any, *, num_heads: int = 3, kind: str = "hydra", prompts: int = 320,
          tokens_per_prompt: int = 96, epochs: int = 3, seed: int = 0, lr: float = 3e-3, gen_batch: int = 32,
          train_batch: int = 64, prompt_list: list[str] | None = None, verbose: bool = False
          ) -> tuple[DraftHeads, dict[str, Any]]:
    """Fit ``num_heads`` heads of ``kind`` for ``model``; returns the heads and their metadata."""
    from decodekit import Pipeline

    torch.manual_seed(seed)
    pipe = Pipeline(model, tokenizer=tokenizer)
    texts = prompt_list if prompt_list is not None else builtin_prompts(prompts, seed)
    ids = [pipe.encode(t) for t in texts]
    t0 = time.perf_counter()
    bar = _bar(verbose, len(ids) * tokens_per_prompt, "generate (row-steps)")
    seqs = collect(model, ids, tokens_per_prompt, set(pipe.eos_token_ids()), pipe.pad_token_id,
                   gen_batch, bar.update if bar else None)
    if bar:
        bar.close()
    t_gen = time.perf_counter() - t0
    # hold out the last prompts (the list is already shuffled) for the accuracy table
    n_val = max(1, round(HOLDOUT * len(seqs))) if len(seqs) > 1 else 0
    H, X = examples(seqs[:len(seqs) - n_val], num_heads)
    Hv, Xv = examples(seqs[len(seqs) - n_val:], num_heads) if n_val else (H, X)
    if len(H) == 0:
        raise ValueError("no training positions: every continuation ended at once (raise --tokens-per-prompt)")
    d = H.shape[-1]
    heads = DraftHeads(d, num_heads, kind)
    device = next(model.parameters()).device
    heads.to(device)
    H, X, Hv, Xv = H.to(device), X.to(device), Hv.to(device), Xv.to(device)
    t1 = time.perf_counter()
    bar = _bar(verbose, epochs * len(H), "train (positions)")

    def step(n: int, info: dict[str, float]) -> None:
        if bar:
            bar.update(n)
            bar.set_postfix({k: f"{v:.2f}" for k, v in info.items()}, refresh=False)

    losses = fit(heads, model, H, X, epochs=epochs, batch_size=train_batch, lr=lr, seed=seed, progress=step)
    if bar:
        bar.close()
    t_fit = time.perf_counter() - t1
    acc = accuracy(heads, model, Hv, Xv)
    W = model.get_output_embeddings().weight
    meta = {
        "vocab_size": int(W.shape[0]),
        "model_type": getattr(model.config, "model_type", None),
        "num_hidden_layers": getattr(model.config, "num_hidden_layers", None),
        "accuracy": [[round(a, 4) for a in row] for row in acc],
        "train": {"prompts": len(ids), "tokens_per_prompt": tokens_per_prompt, "epochs": epochs, "seed": seed,
                  "lr": lr, "positions": len(H), "heldout_positions": len(Hv),
                  "epoch_losses": [round(x, 4) for x in losses],
                  "seconds": {"generate": round(t_gen, 1), "fit": round(t_fit, 1),
                              "total": round(time.perf_counter() - t0, 1)},
                  "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    return heads, meta


def _bar(verbose: bool, total: int, desc: str):
    if not verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, mininterval=2.0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m decodekit_speculative.train_heads",
                                 description="Fit Medusa / Hydra draft heads for a causal LM by self-distillation.")
    ap.add_argument("--model", required=True, help="model alias (smollm2-135m) or local HuggingFace directory")
    ap.add_argument("--out", required=True, help="directory to write heads.safetensors and heads.json into")
    ap.add_argument("--heads", type=int, default=3, help="number of heads: predict tokens t+2 .. t+heads+1")
    ap.add_argument("--kind", choices=["medusa", "hydra"], default="hydra")
    ap.add_argument("--prompts", type=int, default=320, help="prompts drawn from the built-in list")
    ap.add_argument("--tokens-per-prompt", type=int, default=96, help="greedy tokens generated per prompt")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--gen-batch", type=int, default=32, help="prompts per generation batch")
    ap.add_argument("--train-batch", type=int, default=64, help="positions per optimiser step")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--dtype", default="float32", help="the model's dtype while generating (heads train in float32)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    if a.heads < 1 or a.prompts < 1 or a.tokens_per_prompt < 2 or a.epochs < 1:
        ap.error("--heads, --prompts, --epochs must be >= 1 and --tokens-per-prompt >= 2")

    from decodekit.errors import DecodekitError
    from decodekit.models import load

    try:
        model, tokenizer = load(a.model, a.device, a.dtype)
    except DecodekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.quiet:
        print(f"train_heads: {a.kind} x{a.heads} for {a.model} ({type(model).__name__}, "
              f"hidden {model.config.hidden_size}); {a.prompts} prompts x {a.tokens_per_prompt} tokens, "
              f"{a.epochs} epoch(s), {torch.get_num_threads()} thread(s)", file=sys.stderr)
    heads, meta = train(model, tokenizer, num_heads=a.heads, kind=a.kind, prompts=a.prompts,
                        tokens_per_prompt=a.tokens_per_prompt, epochs=a.epochs, seed=a.seed, lr=a.lr,
                        gen_batch=a.gen_batch, train_batch=a.train_batch, verbose=not a.quiet)
    meta = {"model": a.model, **meta,
            "command": "python -m decodekit_speculative.train_heads " + shlex.join(argv)}
    out = save_heads(heads, a.out, meta)
    if not a.quiet:
        top1 = ", ".join(f"head {k + 1}: {row[0]:.2f}" for k, row in enumerate(meta["accuracy"]))
        print(f"train_heads: wrote {out} in {meta['train']['seconds']['total']:.0f} s "
              f"({meta['train']['positions']} positions); held-out top-1 accuracy {top1}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
