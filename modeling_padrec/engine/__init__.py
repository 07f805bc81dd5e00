"""padrec's decoding engine: catalog-constrained list decoding with jump-forward and speculative drafting.

* :mod:`.trie`: the catalog compiled into a trie, and the state of one list over it;
* :mod:`.scoring`: the target's side: score candidate positions under a mask, keep a subset of them;
* :mod:`.proposers`: who proposes tokens (nobody, or a PAD-Rec draft's chain reading the engine's own features);
* :mod:`.tree`: draft trees over the trie, grown level by level and verified in one forward;
* :mod:`.acceptance`: greedy and speculative-sampling acceptance of a proposal (multi-candidate for trees);
* :mod:`.loop`: :class:`Engine`, the decoding loop tying them together.

Every file here imports only torch, transformers, the standard library and each other, so the folder ships as
Hub remote code.
"""

from .loop import Engine, EngineOutput, GenerationSettings, Round
from .trie import CatalogTrie, ListState

__all__ = ["CatalogTrie", "Engine", "EngineOutput", "GenerationSettings", "ListState", "Round"]
