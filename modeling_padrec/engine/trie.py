"""The catalog as a compiled trie, and the state of one list being written over it.

A recommendation list is ``item <sep> item ... item </s>``, every item a path of L code tokens from the trie's
root to a leaf. :class:`CatalogTrie` compiles the catalog once into flat tensors (nodes numbered level by level,
the children of a node contiguous and sorted by token), built with vectorised ops so a million items take
seconds. :class:`ListState` walks it for one request: the valid next tokens, whether exactly one is valid (a
*forced* token, which no model needs to be asked for), the run of tokens forced from there, and the items
already in the list (never twice; exactly N items, then EOS; a catalog smaller than N ends early).

The walk runs on the host, like the grammar backends of serving engines: per step it touches one node's
children and the handful of items already listed, never the catalog, so its cost does not grow with the catalog.
Masks it produces are applied to logits on whatever device they live on.

This file imports only torch and the standard library: it ships as Hub remote code.
"""

from __future__ import annotations

import torch

ROOT = 0


class CatalogTrie:
    """Every catalog item's code tokens as a trie.

    Args:
        item_token_ids: ``(num_items, L)`` token ids of every item (rows need not be unique or sorted; a code
            that appears twice is one leaf).
        sep_id, eos_id: the separator and the end-of-list token.
        list_len: items per list (N).

    Tensors (``num_nodes`` entries, node 0 the root, then level 1, ..., level L = the leaves):
    ``token`` (the token leading into a node), ``parent``, ``depth``, ``first_child`` / ``num_children`` (children
    are the contiguous ids ``first_child .. first_child + num_children - 1``, sorted by token) and ``leaves``
    (catalog items below a node). ``leaf_item[j]`` is the row of ``item_token_ids`` for leaf ``j``.
    """

    def __init__(self, item_token_ids, sep_id: int, eos_id: int, list_len: int):
        codes = torch.as_tensor(item_token_ids, dtype=torch.long).cpu()
        if codes.dim() != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
            raise ValueError(
                f"item_token_ids must be a non-empty (num_items, L) table, got {tuple(codes.shape)}"
            )
        if list_len < 1:
            raise ValueError(f"list_len must be >= 1, got {list_len}")
        if sep_id == eos_id or bool(((codes == sep_id) | (codes == eos_id)).any()):
            raise ValueError("the separator and EOS must be distinct and never appear inside an item's code")
        self.sep_id, self.eos_id, self.list_len = int(sep_id), int(eos_id), int(list_len)
        self.levels = codes.shape[1]
        self._build(codes)
        # compact tables: int32 ids (a catalog has far fewer than 2^31 nodes), int8 depths
        for name in ("token", "parent", "first_child", "num_children", "leaves", "leaf_item"):
            setattr(self, name, getattr(self, name).to(torch.int32))
        self.depth = self.depth.to(torch.int8)
        self.num_items = int(self.leaves[ROOT])
        self.items_per_list = min(self.list_len, self.num_items)  # a small catalog ends the list early
        # host mirrors of the tables the walk reads: Python-int indexing, far cheaper per step than tensor indexing
        self._tok = self.token.tolist()
        self._first = self.first_child.tolist()
        self._count = self.num_children.tolist()
        self._leaves = self.leaves.tolist()
        self._parent = self.parent.tolist()
        self._device_tables: dict[str, torch.Tensor] = {}

    def _build(self, codes: torch.Tensor) -> None:
        order = torch.arange(codes.shape[0])
        for col in reversed(range(self.levels)):  # stable sorts, last column first: lexicographic order
            order = order[torch.sort(codes[order, col], stable=True).indices]
        codes = codes[order]
        n = codes.shape[0]
        new_prefix = torch.zeros(n, dtype=torch.bool)  # row starts a new prefix of length d + 1
        new_prefix[0] = True
        ids_per_level, tokens, parents, depths = (
            [],
            [torch.tensor([-1])],
            [torch.tensor([-1])],
            [torch.tensor([0])],
        )
        offset, parent_of_row = 1, torch.zeros(n, dtype=torch.long)
        for d in range(self.levels):
            if n > 1:
                new_prefix[1:] = new_prefix[1:] | (codes[1:, d] != codes[:-1, d])
            node_of_row = offset + torch.cumsum(new_prefix.long(), 0) - 1
            starts = new_prefix.nonzero().squeeze(1)
            tokens.append(codes[starts, d])
            parents.append(parent_of_row[starts])
            depths.append(torch.full((len(starts),), d + 1))
            ids_per_level.append(node_of_row)
            parent_of_row = node_of_row
            offset += len(starts)
        self.num_nodes = offset
        self.token = torch.cat(tokens)
        self.parent = torch.cat(parents)
        self.depth = torch.cat(depths)
        leaf_rows = (
            (ids_per_level[-1][1:] != ids_per_level[-1][:-1]) if n > 1 else torch.zeros(0, dtype=torch.bool)
        )
        leaf_first_row = torch.cat([torch.tensor([0]), leaf_rows.nonzero().squeeze(1) + 1])
        self.leaf_item = order[leaf_first_row]  # one catalog row per distinct code
        self.first_leaf = int(ids_per_level[-1][0])
        # leaves below every node: count leaves, then add children into parents, deepest level first
        leaves = torch.zeros(self.num_nodes, dtype=torch.long)
        leaves[self.first_leaf :] = 1
        for d in range(self.levels, 0, -1):
            at = (self.depth == d).nonzero().squeeze(1)
            leaves.index_add_(0, self.parent[at], leaves[at])
        self.leaves = leaves
        children = torch.bincount(self.parent[1:], minlength=self.num_nodes)
        first = torch.zeros(self.num_nodes, dtype=torch.long)
        # nodes are numbered level by level in sorted order, so a node's children follow its previous sibling's
        has = children > 0
        first[has] = torch.cumsum(children, 0)[has] - children[has] + 1
        self.first_child, self.num_children = first, children

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_token_map(cls, token_map, index, list_len: int) -> CatalogTrie:
        """The trie of ``index``'s items in ``token_map``'s token ids (padrec's own types)."""
        return cls(token_map.item_ids(index), token_map.sep_id, token_map.eos_id, list_len)

    def nbytes(self) -> int:
        """Memory of the compiled tensor tables (the host mirrors of five of them, Python lists, come on top:
        measure those as process memory)."""
        tensors = (self.token, self.parent, self.depth, self.first_child, self.num_children, self.leaves,
                   self.leaf_item)  # fmt: skip
        return sum(t.numel() * t.element_size() for t in tensors)

    def child(self, node: int, token: int) -> int:
        """The child of ``node`` reached by ``token``, or -1."""
        tok = self._tok
        lo = self._first[node]
        hi = lo + self._count[node]
        while lo < hi:  # binary search: children are sorted by token
            mid = (lo + hi) // 2
            if tok[mid] < token:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < self._first[node] + self._count[node] and tok[lo] == token else -1

    def device_token_table(self, device) -> torch.Tensor:
        """The ``token`` table as int64 on ``device`` (cached), for indexing logits where they live."""
        key = str(device)
        if key not in self._device_tables:
            self._device_tables[key] = self.token.to(device=device, dtype=torch.long)
        return self._device_tables[key]

    def start(self) -> ListState:
        """The state of an empty list."""
        return ListState(self)

    def walk(self, generated) -> ListState:
        """The state after ``generated`` (token ids after the prompt); an invalid list ends in ``invalid``."""
        state = ListState(self)
        for tok in generated:
            if not state.advance(int(tok)):
                break
        return state


class ListState:
    """Where one list stands in the trie: its current node, the items it holds, whether it has ended.

    ``node`` is the trie node of the item being written (the root between items); at a leaf the next token is
    the separator, or EOS once the list holds ``items_per_list`` items. ``exhausted[node]`` holds the tokens of
    ``node``'s children whose every item is already in the list.
    """

    __slots__ = ("trie", "node", "items", "done", "invalid", "used", "exhausted")

    def __init__(self, trie: CatalogTrie):
        self.trie = trie
        self.node = ROOT
        self.items = 0
        self.done = False  # EOS written
        self.invalid = False  # a token the list could not take (only on a rejected proposal); EOS only
        self.used: dict[int, int] = {}  # node → items of the list below it
        self.exhausted: dict[int, set[int]] = {}

    def copy(self) -> ListState:
        other = ListState.__new__(ListState)
        other.trie, other.node, other.items = self.trie, self.node, self.items
        other.done, other.invalid = self.done, self.invalid
        other.used = dict(self.used)
        other.exhausted = {k: set(v) for k, v in self.exhausted.items()}
        return other

    @property
    def at_leaf(self) -> bool:
        return self.node >= self.trie.first_leaf

    @property
    def ended(self) -> bool:
        """Nothing but EOS can follow (EOS written, or an invalid token)."""
        return self.done or self.invalid

    def allowed(self) -> list[int]:
        """The valid next tokens, sorted."""
        trie = self.trie
        if self.ended:
            return [trie.eos_id]
        if self.at_leaf:
            return [trie.eos_id if self.items >= trie.items_per_list else trie.sep_id]
        first, count = trie._first[self.node], trie._count[self.node]
        gone = self.exhausted.get(self.node)
        toks = trie._tok[first : first + count]
        out = [t for t in toks if t not in gone] if gone else list(toks)
        return out or [trie.eos_id]

    def num_allowed(self) -> int:
        if self.ended or self.at_leaf:
            return 1
        gone = self.exhausted.get(self.node)
        n = self.trie._count[self.node] - (len(gone) if gone else 0)
        return max(n, 1)

    def forced(self) -> int | None:
        """The one valid next token, or None where the list has a choice."""
        return self.allowed()[0] if self.num_allowed() == 1 else None

    def allowed_tensor(self, device=None) -> torch.Tensor:
        """:meth:`allowed` as a tensor of token ids on ``device``."""
        trie = self.trie
        if not (self.ended or self.at_leaf) and not self.exhausted.get(self.node):
            first = trie._first[self.node]
            return trie.device_token_table(device or "cpu")[first : first + trie._count[self.node]]
        return torch.tensor(self.allowed(), dtype=torch.long, device=device)

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` (..., vocab) with every invalid next token set to -inf (a new tensor)."""
        allowed = self.allowed_tensor(scores.device)
        out = torch.full_like(scores, float("-inf"))
        out[..., allowed] = scores[..., allowed]
        return out

    def advance(self, token: int) -> bool:
        """Take ``token``; returns False (and the state becomes ``invalid``) if the list cannot take it."""
        trie = self.trie
        if self.done:
            self.invalid = self.invalid or token != trie.eos_id
            return token == trie.eos_id
        if self.invalid:  # an invalid list can only end
            self.done = token == trie.eos_id
            return self.done
        if self.at_leaf:
            if token == trie.sep_id and self.items < trie.items_per_list:
                self.node = ROOT
                return True
            if token == trie.eos_id and self.items >= trie.items_per_list:
                self.done = True
                return True
            self.invalid = True
            return False
        nxt = trie.child(self.node, token)
        if nxt < 0 or token in self.exhausted.get(self.node, ()):
            self.invalid = True
            return False
        self.node = nxt
        if self.at_leaf:
            self._list_item(nxt)
        return True

    def _list_item(self, leaf: int) -> None:
        trie = self.trie
        self.items += 1
        node = leaf
        while node != ROOT:
            count = self.used.get(node, 0) + 1
            self.used[node] = count
            parent = trie._parent[node]
            if count >= trie._leaves[node]:
                self.exhausted.setdefault(parent, set()).add(trie._tok[node])
            node = parent

    def forced_run(self, limit: int | None = None) -> list[int]:
        """Advance over every forced token from here (at most ``limit``); returns them. Stops after EOS."""
        run: list[int] = []
        while not self.done and (limit is None or len(run) < limit):
            tok = self.forced()
            if tok is None:
                break
            self.advance(tok)
            run.append(tok)
        return run
