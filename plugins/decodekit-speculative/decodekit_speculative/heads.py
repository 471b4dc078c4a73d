"""Trained draft heads (Medusa, Hydra): draft from the target's own last hidden state.

The target's last hidden state ``h_t`` (after the final norm, the input of its LM head) at the
last position whose token verify accepted already gave the next token ``x_{t+1}`` (verify's bonus
or corrected token). ``K`` small heads on ``h_t`` predict ``x_{t+2} .. x_{t+K+1}``; each head is one
residual block whose output goes through the target's *own* LM head (the weight is shared,
never copied or saved):

* ``medusa`` (Cai et al., 2024): independent heads, ``s_k = B_k(h_t)``, ``logits_k = LM(s_k)``;
* ``hydra`` (Ankner et al., 2024): sequentially dependent heads. Head ``k`` also sees the embedding
  of the token drafted before it, and the state of the head before it:
  ``s_0 = h_t``, ``s_k = B_k(s_{k-1} + U_k e(y_{k-1}))``, ``logits_k = LM(s_k)``, where ``y_0 =
  x_{t+1}`` (committed) and ``y_{k-1}`` the depth ``k - 1`` draft token on the node's path. So a
  Hydra node's children depend on the node's own token, a Medusa node's only on its depth.

``B_k(x) = x + SiLU(W_k x + b_k)`` with ``W_k, b_k`` (and ``U_k``) zero at first: an untrained head
predicts what the LM head predicts from ``h_t``, the usual starting point of Medusa training.

How ``h_t`` is read: :class:`HiddenCapture` registers a forward *pre*-hook on the target's LM head
for the duration of a call. It is armed at the end of ``propose``, so it catches exactly the next
LM-head call: the engine's target pass, whose input is ``[B', 1 + N, d]``, aligned with the
logits (position 0 = after the last pending token, ``1 + i`` = after draft node ``i``). After
verify, row ``b``'s hidden state is at ``1 + accepted[-1]`` (or 0 when nothing was accepted).
The hook is removed when every row is done, in ``finish``, and in any case when the call's state
is garbage collected (``weakref.finalize``); it holds only a weak reference to that state. The
heads' own LM-head products call the head's ``forward`` directly (its own kernel, oneDNN when
the model was packed with ``cpu_kernels: onednn``), so they never trigger it.

Drafts are token trees, best-first by estimated acceptance as in token recycling: a template of
``(parent, depth, rank)`` nodes whose reach (product of per-depth, per-rank acceptance rates along
the path) is largest, cut to the size that maximises expected tokens per unit of cost
(:func:`plan_heads_tree`: the plugin's measured verify cost plus the heads' own measured time, an
LM-head product over the whole vocabulary per Hydra level and one for all of Medusa's heads, timed
per product as the heads run, so a deeper Hydra tree must earn its levels). Rank ``r``
at depth ``d`` holds the ``r``-th best token of head ``d``. Deterministic drafts (``q = None``):
siblings are distinct top-k tokens, which the host's verifiers need.

Files: ``heads.safetensors`` (the blocks' weights, bf16) and ``heads.json`` (format, kind,
sizes, the model they were trained for, measured top-k accuracies used as acceptance priors, and
the exact training command); written by ``python -m decodekit_speculative.train_heads``.
"""

from __future__ import annotations

import json
import time
import weakref
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from decodekit.generation import Generation
from decodekit.types import Decision, Draft

from decodekit_speculative.planning import CostModel, RankStats, best_prefix, depth_tree_template

FORMAT = "decodekit-heads/1"
WEIGHTS = "heads.safetensors"
META = "heads.json"
KINDS = ("medusa", "hydra")
SHIPPED = Path(__file__).resolve().parent / "heads"
EMBEDDED = "smollm2-135m"        # the model alias with shipped heads
DEFAULT_KIND = "hydra"           # the shipped set used when head_kind is not given
PRIOR_TOP, PRIOR_RANK, PRIOR_DEPTH = 0.35, 0.5, 0.7  # untrained prior: 0.35 * 0.5^rank * 0.7^depth
TRAIN_HINT = "python -m decodekit_speculative.train_heads --model {model} --out DIR"


# -- the heads ---------------------------------------------------------------------------------

class ResBlock(nn.Module):
    """``x + SiLU(W x + b)``; starts as the identity (``W = 0``, ``b = 0``)."""

    def __init__(self, d: int):
        super().__init__()
        self.linear = nn.Linear(d, d)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


class DraftHeads(nn.Module):
    """``num_heads`` heads of width ``hidden_size``; ``kind`` is ``medusa`` or ``hydra``.

    Only the heads' own weights are parameters; the LM head and the embeddings are the target's
    and are passed in where needed.

    Example::

        heads = DraftHeads(hidden_size=32, num_heads=3, kind="hydra")
        s = heads.states(h, prev_emb)   # h [n, 32], prev_emb [n, 3, 32] -> [n, 3, 32]
        logits = F.linear(s, model.get_output_embeddings().weight)   # [n, 3, V]
    """

    def __init__(self, hidden_size: int, num_heads: int = 3, kind: str = "medusa"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"head kind {kind!r}: use medusa or hydra")
        if num_heads < 1:
            raise ValueError("num_heads must be at least 1")
        self.kind, self.hidden_size, self.num_heads = kind, hidden_size, num_heads
        self.blocks = nn.ModuleList(ResBlock(hidden_size) for _ in range(num_heads))
        self.embed_proj: nn.ModuleList | None = None
        if kind == "hydra":
            self.embed_proj = nn.ModuleList(nn.Linear(hidden_size, hidden_size, bias=False)
                                            for _ in range(num_heads))
            for p in self.embed_proj:
                nn.init.zeros_(p.weight)

    def medusa(self, h: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """``h [n, d]`` -> ``[n, depth, d]``: the first ``depth`` Medusa heads' states."""
        return torch.stack([blk(h) for blk in self.blocks[:depth or self.num_heads]], dim=1)

    def hydra_step(self, k: int, state: torch.Tensor, prev_emb: torch.Tensor) -> torch.Tensor:
        """Hydra head ``k`` (0-based): ``s_{k+1} = B_k(s_k + U_k e)``; ``state, prev_emb [n, d]``."""
        return self.blocks[k](state + self.embed_proj[k](prev_emb))

    def states(self, h: torch.Tensor, prev_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced states of every head: ``h [n, d]``, ``prev_emb [n, K, d]`` (the
        embeddings of ``x_{t+1} .. x_{t+K}``, Hydra only) -> ``[n, K, d]``."""
        if self.kind == "medusa":
            return self.medusa(h)
        if prev_emb is None or prev_emb.shape[1] < self.num_heads:
            raise ValueError("hydra heads need the embeddings of the K tokens before their targets")
        out, s = [], h
        for k in range(self.num_heads):
            s = self.hydra_step(k, s, prev_emb[:, k])
            out.append(s)
        return torch.stack(out, dim=1)

    def randomize(self, seed: int = 0, scale: float = 0.5) -> "DraftHeads":
        """Random (untrained) weights, for tests on tiny models."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale / p.shape[-1] ** 0.5)
        return self


def save_heads(heads: DraftHeads, out: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``heads.safetensors`` (bf16) and ``heads.json`` into the directory ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in heads.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS), metadata={"format": FORMAT})
    full = {"format": FORMAT, "kind": heads.kind, "num_heads": heads.num_heads,
            "hidden_size": heads.hidden_size, **meta}
    (out / META).write_text(json.dumps(full, indent=2) + "\n")
    return out


def load_heads(path: str | Path, *, hidden_size: int, vocab_size: int | None = None,
               model: str = "<model>") -> tuple[DraftHeads, dict[str, Any]]:
    """Read heads written by :func:`save_heads`; check they fit a target of ``hidden_size``."""
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    where = p if p.is_dir() else p.parent
    hint = TRAIN_HINT.format(model=model)
    if not (where / META).is_file() or not (where / WEIGHTS).is_file():
        raise FileNotFoundError(f"heads: no draft heads at {p} (a directory with {META} and {WEIGHTS}); "
                                f"train them with `{hint}` and pass heads: DIR")
    meta = json.loads((where / META).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"heads: {where / META} is not a {FORMAT} file (format {meta.get('format')!r})")
    if int(meta["hidden_size"]) != hidden_size:
        raise ValueError(f"heads: {where} were trained for hidden size {meta['hidden_size']} "
                         f"(model {meta.get('model', '?')}), but the target's hidden size is {hidden_size}; "
                         f"train heads for this model with `{hint}`")
    if vocab_size is not None and meta.get("vocab_size") not in (None, vocab_size):
        raise ValueError(f"heads: {where} were trained for a vocabulary of {meta['vocab_size']} tokens "
                         f"(model {meta.get('model', '?')}), but the target's LM head has {vocab_size}; "
                         f"train heads for this model with `{hint}`")
    heads = DraftHeads(hidden_size, int(meta["num_heads"]), meta["kind"])
    state = load_file(str(where / WEIGHTS))
    try:
        heads.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise ValueError(f"heads: {where / WEIGHTS} does not match {where / META}: {e}") from None
    return heads.eval(), meta


def shipped_heads(kind: str) -> Path:
    """The shipped heads of the embedded model (``kind``: medusa or hydra)."""
    return SHIPPED / EMBEDDED / kind


# -- reading the target's last hidden state ----------------------------------------------------

class HiddenCapture:
    """A pre-hook on ``model``'s LM head that keeps the LM head's input of the next call once armed.

    ``arm()``, then run the model; ``take()`` returns ``[B', J, d]`` (the positions whose logits
    the model computed) or None. ``close()`` removes the hook; so does garbage collection of this
    object (the hook holds a weak reference to it only).
    """

    def __init__(self, model: nn.Module):
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"heads: {type(model).__name__} has no output embeddings (LM head) to share")
        self.armed = False
        self.hidden: torch.Tensor | None = None
        me = weakref.ref(self)

        def hook(module, args, kwargs):
            cap = me()
            if cap is not None and cap.armed:
                x = args[0] if args else next(iter(kwargs.values()))
                cap.hidden, cap.armed = x.detach(), False

        self._handle = head.register_forward_pre_hook(hook, with_kwargs=True)
        self._finalizer = weakref.finalize(self, self._handle.remove)

    def arm(self) -> None:
        self.hidden, self.armed = None, True

    def take(self) -> torch.Tensor | None:
        h, self.hidden, self.armed = self.hidden, None, False
        return h

    def close(self) -> None:
        self._finalizer()  # removes the hook (once)


# -- the tree ----------------------------------------------------------------------------------

def plan_heads_tree(rates: list[list[float]], max_nodes: int, cost: Callable[[int, int], float],
                    products: Callable[[int], int]) -> list[tuple[int, int, int, float]]:
    """The prefix of :func:`depth_tree_template` maximising ``(1 + sum reach) / cost(n, p)``, where a
    tree of ``n`` nodes ``d`` levels deep takes ``p = products(d)`` of the heads' LM-head products."""
    template = depth_tree_template(rates, max_nodes)
    deepest = list(accumulate((depth for _, depth, _, _ in template), max, initial=0))  # [n + 1]
    return template[:best_prefix([reach for *_, reach in template], lambda n: cost(n, products(deepest[n])))]


def prior_rates(meta: dict[str, Any] | None, num_heads: int, k: int) -> list[list[float]]:
    """Acceptance priors ``[K][k]``: the heads' measured top-k accuracies, else a generic guess."""
    table = (meta or {}).get("accuracy")
    out = []
    for d in range(num_heads):
        row = list(table[d]) if table and d < len(table) else []
        guess = [PRIOR_TOP * PRIOR_RANK ** r * PRIOR_DEPTH ** d for r in range(k)]
        out.append([min(0.95, max(1e-3, row[r] if r < len(row) else guess[r])) for r in range(k)])
    return out


# -- the proposer ------------------------------------------------------------------------------

@dataclass
class HeadCall:
    """Per call (``generation.scratch``): the capture hook and each row's last hidden state."""

    capture: HiddenCapture
    hidden: torch.Tensor | None = None             # [B, d] at each row's last accepted position
    info: list[Any] = field(default_factory=list)  # per row: [(depth, rank)] per draft node


class HeadProposer:
    """The ``heads`` proposer of the ``speculative`` plugin.

    ``heads``: a :class:`DraftHeads` object (library use, tests) instead of ``options.heads``.
    Persistent on purpose: the loaded heads and the per-depth acceptance estimates. Per call:
    :class:`HeadCall`.
    """

    def __init__(self, options: Any, pipeline: Any, costs: CostModel, heads: DraftHeads | None = None):
        model = pipeline.model
        head = model.get_output_embeddings()
        if head is None or model.get_input_embeddings() is None:
            raise ValueError(f"heads: {type(model).__name__} has no LM head / input embeddings to share")
        self.model, self.costs, self.options = model, costs, options
        V, d = head.weight.shape
        meta: dict[str, Any] | None = None
        if heads is None:
            heads, meta = load_heads(self._path(options, pipeline), hidden_size=d, vocab_size=V,
                                     model=self._model_name(pipeline))
        elif heads.hidden_size != d:
            raise ValueError(f"heads: these heads have hidden size {heads.hidden_size}, the target {d}")
        if options.head_kind is not None and heads.kind != options.head_kind:
            raise ValueError(f"heads: head_kind is {options.head_kind}, but the heads are {heads.kind} heads")
        p = next(model.parameters())
        self.heads = heads.to(p.device, p.dtype).eval()
        self.meta = meta or {}
        self.k = min(options.top_k, V)
        self.stats = [RankStats(r) for r in prior_rates(meta, heads.num_heads, self.k)]

    @staticmethod
    def _model_name(pipeline: Any) -> str:
        name = getattr(getattr(pipeline, "config", None), "model", None)
        return name if name and name != "<object>" else "MODEL"

    def _path(self, options: Any, pipeline: Any) -> Path:
        if options.heads is not None:
            return Path(options.heads).expanduser()
        name = getattr(getattr(pipeline, "config", None), "model", None)
        if name != EMBEDDED:
            raise ValueError(f"proposer heads needs trained heads for this model (shipped heads exist only for "
                             f"model: {EMBEDDED}); train them with "
                             f"`{TRAIN_HINT.format(model=self._model_name(pipeline))}` and pass heads: DIR")
        return shipped_heads(options.head_kind or DEFAULT_KIND)

    # -- per call ------------------------------------------------------------------------------

    def _call(self, gen: Generation) -> HeadCall:
        return gen.scratch(self)["call"]

    def start(self, gen: Generation) -> None:
        gen.scratch(self)["call"] = HeadCall(HiddenCapture(self.model))

    def finish(self, gen: Generation) -> None:
        call = gen.scratch(self).get("call")
        if call is not None:
            call.capture.close()

    @torch.inference_mode()
    def propose(self, gen: Generation, active: list[int], cost) -> tuple[list[Draft | None], list[Any]]:
        """Drafts for the rows in ``active``; ``cost(n, products)``: a verify pass with ``n`` nodes
        per row plus ``products`` of the heads' LM-head products (the plugin prices one from
        :meth:`CostModel.draft_cost`, which this keeps per product)."""
        call = self._call(gen)
        B = gen.num_rows
        drafts: list[Draft | None] = [None] * B
        call.info = [None] * B
        if call.hidden is not None and active:
            rates = [s.rate() for s in self.stats]
            o = self.options
            if o.adaptive:
                template = plan_heads_tree(rates, o.max_draft_tokens, cost, self._products)
            else:
                template = depth_tree_template(rates, o.max_draft_tokens)
            if template:
                t0 = time.perf_counter()
                last = [gen.tokens[b][-1] for b in active]
                for b, (d, info) in zip(active, self.draft(call.hidden[active], last, template)):
                    drafts[b], call.info[b] = d, info
                products = self._products(max(depth for _, depth, _, _ in template))
                self.costs.record_draft((time.perf_counter() - t0) / products)
        call.capture.arm()  # catch the hidden states of the target pass that verifies these drafts
        return drafts, call.info

    def _products(self, depth: int) -> int:
        """LM-head products a draft ``depth`` levels deep takes: Medusa one for all its heads, Hydra
        one per level (each level's heads read the tokens drafted above them)."""
        return 1 if self.heads.kind == "medusa" else max(1, depth)

    def advance(self, gen: Generation, decision: Decision) -> None:
        """Keep each row's hidden state at its last accepted position; decay the statistics."""
        call = self._call(gen)
        for s in self.stats:
            s.step()
        H = call.capture.take()  # [B', 1 + N, d], aligned with the logits of the pass
        if H is None or decision.source_rows is not None:
            call.hidden = None
        else:
            B = gen.num_rows
            j = torch.tensor([1 + v.accepted[-1] if v.accepted else 0 for v in decision.verdicts],
                             device=H.device)
            call.hidden = H[torch.arange(B, device=H.device), j]  # [B, d]
        if all(gen.done):
            call.capture.close()

    def observe(self, draft: Draft, info: list[tuple[int, int]], accepted: list[int]) -> None:
        """Count, at the root and each accepted node, which child (depth, rank) was accepted."""
        node = -1
        for step in range(len(accepted) + 1):
            nxt = accepted[step] if step < len(accepted) else None
            for c in draft.children(node):
                depth, rank = info[c]
                self.stats[depth - 1].observe(rank, c == nxt)
            if nxt is None:
                break
            node = nxt

    # -- drafting ------------------------------------------------------------------------------

    def _logits(self, s: torch.Tensor) -> torch.Tensor:
        head = self.model.get_output_embeddings()
        # the target's own LM head through its own kernel (oneDNN when packed); .forward: no hook fires
        return head.forward(s)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(tokens)

    @torch.inference_mode()
    def draft(self, hidden: torch.Tensor, last: list[int], template: list[tuple[int, int, int, float]]
              ) -> list[tuple[Draft, list[tuple[int, int]]]]:
        """Instantiate ``template`` for ``R`` rows: ``hidden [R, d]``, ``last``: each row's last
        committed token. Returns per row the draft and each node's ``(depth, rank)``."""
        R, n = hidden.shape[0], len(template)
        k = 1 + max(rank for _, _, rank, _ in template)
        D = max(depth for _, depth, _, _ in template)
        parents = [p for p, _, _, _ in template]
        info = [(depth, rank) for _, depth, rank, _ in template]
        tokens = torch.empty(R, n, dtype=torch.long)  # [R, n]
        h = hidden.to(self.heads.blocks[0].linear.weight.dtype)
        if self.heads.kind == "medusa":
            # every node at depth d holds head d's rank-r token, whatever its parent
            top = self._logits(self.heads.medusa(h, D)).topk(k, dim=-1).indices.cpu()  # [R, D, k]
            for i, (_, depth, rank, _) in enumerate(template):
                tokens[:, i] = top[:, depth - 1, rank]
        else:
            # Hydra: a node's children come from the head after its depth, fed the node's state and token
            has_children = {p for p in parents if p >= 0}
            state: dict[int, torch.Tensor] = {}  # node (-1 = root) -> [R, d]: the state its children read
            dev = h.device
            prev = self._embed(torch.tensor(last, device=dev))  # [R, d]
            state[-1] = self.heads.hydra_step(0, h, prev)
            top = {-1: self._logits(state[-1]).topk(k, dim=-1).indices.cpu()}  # node -> [R, k]
            for depth in range(1, D + 1):
                at = [i for i, (_, dd, _, _) in enumerate(template) if dd == depth]
                for i in at:
                    tokens[:, i] = top[parents[i]][:, template[i][2]]
                grow = [i for i in at if i in has_children]
                if not grow or depth >= self.heads.num_heads:
                    continue
                s_par = torch.stack([state[parents[i]] for i in grow], dim=1)  # [R, m, d]
                emb = self._embed(tokens[:, grow].to(dev))                     # [R, m, d]
                s = self.heads.hydra_step(depth, s_par.reshape(-1, s_par.shape[-1]),
                                          emb.reshape(-1, emb.shape[-1])).reshape(s_par.shape)
                cand = self._logits(s).topk(k, dim=-1).indices.cpu()          # [R, m, k]
                for m, i in enumerate(grow):
                    state[i], top[i] = s[:, m], cand[:, m]
        rows = tokens.tolist()
        return [(Draft(rows[r], list(parents)), info) for r in range(R)]
