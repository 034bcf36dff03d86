"""Pretrained word vectors on the LLM's text inputs (groma_core.word_vectors)."""

from __future__ import annotations

import random

import pytest
import torch

from groma_core import language
from groma_core.checkpoint import load_model, save_checkpoint
from groma_core.errors import CheckpointError
from groma_core.model import GromaModel
from groma_core.presets import tiny_config
from groma_core.tokenizer import IGNORE_INDEX
from groma_core.train import _hide_words
from groma_core.word_vectors import WORDS_FILE, WordVectors, read_table


class _Pieces:
    """The two tokenizer members WordVectors.bind reads."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.base_vocab_size = len(pieces)

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[i] for i in ids]


PIECES = ["<unk>", "<s>", "</s>", "▁the", "▁em", "er", "ald", "-", "g", "reen", "▁mug", "!", "▁zq", "x", "▁Or", "b"]
WORDS = ["ald", "emerald", "green", "mug", "orb", "the"]


def _vectors(hidden: int = 3) -> WordVectors:
    wv = WordVectors(len(WORDS), 2, hidden)
    wv.set_words(WORDS)
    wv.bind(_Pieces(PIECES))
    return wv


def test_every_piece_gets_the_word_its_letters_belong_to():
    wv = _vectors()
    ids = [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 400, 5, 12, 13, 14, 15, 2]
    #      <s> the em er ald -  g  reen mug !  <r>  er  zq  x  Or  b  </s>
    words = [WORDS[r] if r >= 0 else None for r in wv.rows(torch.tensor(ids)).tolist()]
    assert words == [None, "the", "emerald", "emerald", "emerald", None, "green", "green", "mug", None, None,
                     None, None, None, "orb", "orb", None]  # "er" after a non-base id is a word of its own


def test_vectors_are_projected_and_zero_for_no_word():
    wv = _vectors(hidden=4)
    wv.table.copy_(torch.arange(12, dtype=torch.float32).reshape(6, 2))
    assert torch.count_nonzero(wv(torch.tensor([0, 3, -1]))) == 0  # the projection starts at zero
    torch.nn.init.ones_(wv.proj.weight)
    out = wv(torch.tensor([0, 3, -1]))
    assert out[:, 0].tolist() == [1.0, 13.0, 0.0]  # row 0 = (0, 1), row 3 = (6, 7), none = 0


def test_answer_tokens_get_no_vector_and_hidden_words_lose_all_their_pieces():
    rows = torch.tensor([-1, 5, 1, 1, 1, -1, 3, 3])
    ids = torch.tensor([1, 3, 4, 5, 6, 11, 10, 99])
    labels = torch.tensor([IGNORE_INDEX] * 6 + [10, 99])  # the last word is an answer
    kept_ids, kept_rows = _hide_words(rows, ids, labels, unk=0, p=0.0, rng=random.Random(0))
    assert kept_ids.tolist() == ids.tolist()
    assert kept_rows.tolist() == [-1, 5, 1, 1, 1, -1, -1, -1]
    hidden_ids, hidden_rows = _hide_words(rows, ids, labels, unk=0, p=1.0, rng=random.Random(0))
    assert hidden_ids.tolist() == [1, 0, 0, 0, 0, 11, 10, 99]  # input words hidden whole, answers untouched
    assert hidden_rows.tolist() == kept_rows.tolist()  # their vectors stay


def test_checkpoint_keeps_the_word_list_and_refuses_to_load_without_it(tmp_path):
    model = GromaModel(tiny_config(400, word_vectors=(len(WORDS), 2)))
    model.word_vectors.set_words(WORDS)
    save_checkpoint(model, tmp_path)
    assert load_model(tmp_path).word_vectors.words == WORDS
    (tmp_path / WORDS_FILE).unlink()
    with pytest.raises(CheckpointError, match="word list"):
        load_model(tmp_path)


def test_packaged_table_places_unseen_object_and_size_words_near_their_meaning():
    """The table is a real text encoder's: most evaluation-only kind and size words of the synthetic world
    are nearest to a training word of the same kind or size (a random table gets about 1 in 10)."""
    words, vectors = read_table()
    row = {w: i for i, w in enumerate(words)}
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    right = total = 0
    for lexicon in (language.KIND_WORDS, language.SIZE_WORDS):
        seen = [(key, w) for key, ws in lexicon.items() for w in ws if not w.startswith("~") and w in row]
        table = unit[[row[w] for _, w in seen]]
        for key, ws in lexicon.items():
            for w in (w[1:] for w in ws if w.startswith("~") and w[1:] in row):
                nearest = int((unit[row[w]] @ table.T).argmax())
                right += seen[nearest][0] == key
                total += 1
    assert total >= 8 and right / total >= 0.8
