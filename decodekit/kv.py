"""A causal LM with a KV cache over a batch of rows whose committed lengths differ.

The engine keeps one of these for the target model; plugins that run a second forward (a draft
model, guidance's unconditional branch) keep their own. It is the single rollback mechanism of
the project: a forward feeds each row's *pending* tokens (committed but not yet cached) followed
by its draft (a chain or a tree); ``commit`` then keeps the pending tokens and the accepted draft
nodes and turns every other new column into a hole.

Layout. The cache has ``C`` columns shared by all rows. ``col_valid [B, C]`` (bool) says which
columns hold a real token of each row; invalid columns are padding or rejected draft slots,
and no query attends to them. ``next_pos [B]`` is the position id of each row's next token (its
number of valid columns), so positions stay those of the unpadded sequence. After each forward
every row's kept columns are packed to the front of the new block (a tree's rejected siblings
would otherwise stay between accepted nodes), and columns that are invalid in every row at the
end of the cache are cropped, so a single row never accumulates holes and runs with no attention
mask at all for chains and plain steps (the model's own causal fast path).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from decodekit.types import Draft


class CachedLM:
    """Wraps ``model`` (any ``AutoModelForCausalLM``) for ``batch_size`` rows.

    Example::

        lm = CachedLM(model, batch_size=1)
        logits = lm.forward([[1, 2, 3]], [None])   # [1, 1, V]: next-token logits after 1 2 3
        lm.commit([[]])                          # keep 1 2 3 in the cache
        logits = lm.forward([[4]], [Draft.chain([5, 6])])  # [1, 3, V]: after 4, after 5, after 6
        lm.commit([[0]])                         # keep 4 and 5; 6's column is dropped
    """

    def __init__(self, model: torch.nn.Module, batch_size: int, pad_token_id: int = 0):
        self.model = model
        self.device = next(model.parameters()).device
        # tree masks are additive, in the model's floating dtype (read once: model.dtype walks the parameters)
        self.mask_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.pad_token_id = pad_token_id
        self.cache = None
        self.col_valid = torch.zeros(batch_size, 0, dtype=torch.bool, device=self.device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        # (P, N, new_valid, whether some row's pending tokens were left-padded) of the last forward
        self._last: tuple[int, int, torch.Tensor, bool] | None = None
        self._holes = False  # whether any cached column is invalid in some row

    @property
    def batch_size(self) -> int:
        return self.col_valid.shape[0]

    @torch.inference_mode()
    def forward(self, pending: list[list[int]], drafts: list[Draft | None] | None = None) -> torch.Tensor:
        """Feed each row's pending tokens then its draft; return logits ``[B, 1 + N, V]`` (float32).

        Position 0 is the logits after the last pending token; position ``1 + i`` the logits after
        draft node ``i`` (rows with shorter drafts are padded: ignore those positions).
        """
        B = self.batch_size
        if len(pending) != B:
            raise ValueError(f"expected pending tokens for {B} rows, got {len(pending)}")
        drafts = drafts if drafts is not None else [None] * B
        P = max(len(p) for p in pending)
        if P == 0:
            raise ValueError("every row needs at least one pending token")
        N = max((len(d) for d in drafts if d is not None), default=0)

        if N == 0 and all(len(p) == P for p in pending):
            # the common step: equal pending lengths, no draft (tensors built in one go)
            ids = torch.tensor(pending, dtype=torch.long, device=self.device)  # [B, P]
            pos = self.next_pos[:, None] + torch.arange(P, device=self.device)  # [B, P]
            new_valid = torch.ones((B, P), dtype=torch.bool, device=self.device)
        else:
            ids, pos, new_valid = self._layout(pending, drafts, P, N)

        if any(d is not None and not d.is_chain for d in drafts):
            attn = self._tree_mask(P, drafts, new_valid)
        elif not self._holes and bool(new_valid.all()):
            attn = None  # plain causal attention: the model's fastest path
        else:  # 2-D padding mask over [B, C + P + N]; causality is added by the model
            attn = torch.cat([self.col_valid, new_valid], dim=1).long()
        out = self.model(
            input_ids=ids,
            position_ids=pos,
            attention_mask=attn,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=N + 1,
        )
        self.cache = out.cache
        self._last = (P, N, new_valid, any(len(p) < P for p in pending))
        return out.logits[:, -(N + 1):, :].float()

    def _layout(self, pending: list[list[int]], drafts: list[Draft | None], P: int, N: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ids``, ``pos``, ``new_valid``, each ``[B, P + N]``: pending tokens left-padded to ``P``,
        then each draft right-padded to ``N``; a node at depth d sits d places after the last
        pending token."""
        B = self.batch_size
        ids = torch.full((B, P + N), self.pad_token_id, dtype=torch.long)
        pos = torch.zeros((B, P + N), dtype=torch.long)
        new_valid = torch.zeros((B, P + N), dtype=torch.bool)
        next_pos = self.next_pos.tolist()
        for b, (toks, draft) in enumerate(zip(pending, drafts)):
            if not toks:
                raise ValueError(f"row {b} has no pending token")
            n_p = len(toks)
            ids[b, P - n_p:P] = torch.tensor(toks)
            pos[b, P - n_p:P] = torch.arange(next_pos[b], next_pos[b] + n_p)
            new_valid[b, P - n_p:P] = True
            if draft is not None and len(draft):
                n = len(draft)
                ids[b, P:P + n] = torch.tensor(draft.tokens)
                base = next_pos[b] + n_p - 1
                pos[b, P:P + n] = torch.tensor([base + draft.depth(i) for i in range(n)])
                new_valid[b, P:P + n] = True
        return ids.to(self.device), pos.to(self.device), new_valid.to(self.device)

    def _tree_mask(self, P: int, drafts: list[Draft | None], new_valid: torch.Tensor) -> torch.Tensor:
        """Float mask ``[B, 1, P + N, C + P + N]``: 0 where a query may attend, dtype-min elsewhere.

        Cached columns: attend where valid. Pending block: causal. Draft node ``i``: every pending
        token, then exactly its ancestors and itself (tree attention). Padding queries attend to
        themselves so that no row of the mask is empty.
        """
        B, C = self.col_valid.shape
        Q = new_valid.shape[1]
        N = Q - P
        allow = torch.zeros((B, Q, C + Q), dtype=torch.bool)
        allow[:, :, :C] = self.col_valid.cpu()[:, None, :]
        causal = torch.tril(torch.ones(Q, Q, dtype=torch.bool))
        nv = new_valid.cpu()
        for b, draft in enumerate(drafts):
            block = causal.clone()
            block[:, :P] &= nv[b, None, :P]
            ancestry = [[False] * N for _ in range(N)]  # [N, N]: node i sees node k (its path)
            if draft is not None:
                for i in range(len(draft)):
                    for k in draft.path(i):
                        ancestry[i][k] = True
            block[P:, P:] = torch.tensor(ancestry, dtype=torch.bool).reshape(N, N)
            block |= torch.eye(Q, dtype=torch.bool)
            allow[b, :, C:] = block
        mask = torch.zeros((B, 1, Q, C + Q), dtype=self.mask_dtype)
        mask.masked_fill_(~allow[:, None], torch.finfo(self.mask_dtype).min)
        return mask.to(self.device)

    def commit(self, accepted: list[list[int]], source_rows: list[int] | None = None) -> None:
        """Keep the last forward's pending tokens and, per row, the accepted draft nodes.

        ``accepted[b]``: draft node indices to keep (a root-to-node path). Every other column of
        the last forward becomes a hole. ``source_rows`` (beam search) then reorders the rows.
        """
        if self._last is None:
            raise RuntimeError("commit() without a forward()")
        P, N, new_valid, padded = self._last
        keep = new_valid.clone()
        keep[:, P:] = False
        for b, nodes in enumerate(accepted):
            if nodes:
                keep[b, [P + i for i in nodes]] = True
        # decided on the host (no device sync): a row's kept columns are already at the front of the
        # block unless its pending tokens were left-padded or its accepted nodes skip a sibling
        if padded or any(nodes != list(range(len(nodes))) for nodes in accepted):
            keep = self._pack_block(keep)
        self.col_valid = torch.cat([self.col_valid, keep], dim=1)
        self.next_pos = self.next_pos + keep.sum(dim=1)
        self._last = None
        self._crop_trailing_holes()
        if source_rows is not None:
            self.reorder(source_rows)

    def rollback(self, lengths: list[int]) -> None:
        """Keep only the first ``lengths[b]`` committed tokens of each row (a drafter's undo)."""
        counts = self.col_valid.long().cumsum(dim=1)  # [B, C]: valid columns up to each column
        limit = torch.tensor(lengths, device=self.device)[:, None]
        self.col_valid = self.col_valid & (counts <= limit)
        self.next_pos = torch.minimum(self.next_pos, limit[:, 0])
        self._crop_trailing_holes()

    def reorder(self, source_rows: list[int]) -> None:
        """Row ``b`` becomes a copy of row ``source_rows[b]`` (beam search)."""
        idx = torch.tensor(source_rows, device=self.device)
        if self.cache is not None:
            self.cache.reorder_cache(idx)
        self.col_valid = self.col_valid.index_select(0, idx)
        self.next_pos = self.next_pos.index_select(0, idx)
        self._holes = not bool(self.col_valid.all())

    @torch.inference_mode()
    def _pack_block(self, keep: torch.Tensor) -> torch.Tensor:
        """Move each row's kept columns of the last forward to the front of its block, in order.

        ``keep [B, Q]``: which of the ``Q = P + N`` columns just appended each row keeps (its
        pending tokens and accepted path). A tree's rejected siblings sit between accepted nodes
        and would stay in the cache as holes for the rest of the call (masked, but attended over
        and copied at every pass). Keys carry their rotary positions already, so columns may move:
        per row, the kept ones are gathered to the block's front (their order, and so the order of
        the row's tokens, is unchanged) and the rest become trailing holes, which the crop removes.
        A single row is then never left with a hole. Returns the new ``keep``. Cache layouts other
        than transformers' plain ``DynamicLayer`` (sliding windows, quantised caches) are left as they
        are: holes only cost time, never correctness.
        """
        B, Q = keep.shape
        front = torch.arange(Q, device=keep.device)[None, :] < keep.sum(dim=1, keepdim=True)  # [B, Q]
        layers = getattr(self.cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return keep
        # layers a forward skips (an amateur or draft view of the model) hold nothing; every other
        # one must hold exactly the columns col_valid describes, the block last
        layers = [layer for layer in layers if layer.keys is not None]
        if any(layer.keys.shape[-2] != self.col_valid.shape[1] + Q for layer in layers):
            return keep
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # [B, Q]: kept first
        for layer in layers:
            for name in ("keys", "values"):
                states = getattr(layer, name)  # [B, H, C, D]; the last Q columns are the block
                index = order[:, None, :, None].expand(-1, states.shape[1], -1, states.shape[3])
                states[:, :, -Q:, :] = torch.gather(states[:, :, -Q:, :], 2, index)
        return front

    def _crop_trailing_holes(self) -> None:
        self._holes = not bool(self.col_valid.all())
        if not self._holes:
            return
        any_valid = self.col_valid.any(dim=0)
        C = self.col_valid.shape[1]
        nz = torch.nonzero(any_valid)
        new_len = int(nz[-1]) + 1 if len(nz) else 0
        if new_len < C:
            self.col_valid = self.col_valid[:, :new_len]
            if self.cache is not None:
                self.cache.crop(-(C - new_len))  # transformers 5: a negative count removes that many
            self._holes = not bool(self.col_valid.all())
