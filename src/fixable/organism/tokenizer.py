"""The organism's tokenizer: one token per character over a fixed, small alphabet.

A fixed alphabet keeps every model of the zoo on the same vocabulary, so any two of them
can be mixed token by token, and the vocabulary exports verbatim to a Hugging Face
tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

SPECIALS = ("<pad>", "<bos>", "<eos>")
ALPHABET = "0123456789|=# :,.-+*()[]" + "abcdefghijklmnopqrstuvwxyz"


class CharTokenizer:
    """Characters ↔ ids; ``<bos>`` starts every prompt and ``<eos>`` ends every completion."""

    def __init__(self, alphabet: str = ALPHABET):
        self.itos: list[str] = list(SPECIALS) + list(alphabet)
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        try:
            ids = [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the organism's alphabet") from None
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Sequence[int], *, stop_at_eos: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id and stop_at_eos:
                break
            if i >= len(SPECIALS):
                out.append(self.itos[i])
        return "".join(out)
