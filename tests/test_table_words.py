"""Growing the word-vector table: WordNet lemmas (groma_core.wordnet) and word_vectors.add_words."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from groma_core import word_vectors
from groma_core.word_vectors import add_words, read_words, write_words
from groma_core.wordnet import lemmas

DATA_NOUN = """  1 This software and database is being provided to you, the LICENSEE, by
00000001 06 n 03 beaker 0 tin_can 0 Jar 1 000 | a flat-bottomed vessel
00000002 25 n 02 orb 0 ball 1 000 | a sphere
00000003 09 n 01 mortgage 0 000 | a loan
"""
DATA_ADJ = "00000004 00 a 02 bouncy 0 scarlet(a) 0 000 | lively\n"


def test_lemmas_of_chosen_lexicographer_files(tmp_path):
    (tmp_path / "data.noun").write_text(DATA_NOUN)
    (tmp_path / "data.adj").write_text(DATA_ADJ)
    assert lemmas(tmp_path, ["noun.artifact"]) == ["beaker", "jar"]  # tin_can: not one word
    assert lemmas(tmp_path, ["noun.artifact", "noun.shape", "adj.all"]) == ["ball", "beaker", "bouncy", "jar", "orb",
                                                                           "scarlet"]
    with pytest.raises(ValueError, match="unknown lexicographer file"):
        lemmas(tmp_path, ["noun.nothing"])
    with pytest.raises(FileNotFoundError, match="data.verb"):
        lemmas(tmp_path, ["verb.contact"])


def _fake_embeddings(words):
    """A fixed 8-wide unit embedding per word (stands in for the sentence encoder)."""
    out = []
    for w in words:
        g = torch.Generator().manual_seed(sum(ord(c) * 31 ** i for i, c in enumerate(w)) % (2 ** 31))
        out.append(torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0))
    return torch.stack(out)


def test_added_rows_follow_the_tables_own_affine_map(tmp_path, monkeypatch):
    monkeypatch.setattr(word_vectors, "embed_words", lambda encoder, words, batch=512: _fake_embeddings(words))
    words = [f"w{chr(97 + i)}{chr(97 + j)}" for i in range(8) for j in range(8)] + ["red", "scarlet"]
    weight, bias = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0.5, -1.0, 0.0, 2.0])
    table = _fake_embeddings(words) @ weight + bias
    table[-1] = table[-2]  # 'scarlet' carries red's vector: not of the map, left out of the fit
    save_file({"word_vectors.table": table.half(), "other": torch.zeros(2)}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    write_words(words, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"groma_core": {"word_vector_count": len(words)}}))

    assert add_words(tmp_path, "encoder", ["beaker", "red", "leftmost", "orb"], keep_out=["leftmost"]) == 2
    grown = load_file(str(tmp_path / "model.safetensors"))["word_vectors.table"]
    assert read_words(tmp_path) == words + ["beaker", "orb"]
    assert torch.equal(grown[: len(words)], table.half())
    expected = _fake_embeddings(["beaker", "orb"]) @ weight + bias
    assert torch.allclose(grown[len(words):].float(), expected, atol=0.02)
    assert json.loads((tmp_path / "config.json").read_text())["groma_core"]["word_vector_count"] == len(words) + 2
    assert add_words(tmp_path, "encoder", ["orb"]) == 0  # nothing new


def test_packaged_table_has_wordnet_words_but_no_row_for_a_training_word_it_lacked():
    """`groma add-words` grew the package table (and groma-tiny's copy) by WordNet's object, shape, food,
    adjective and handling-verb words, leaving the training language's words as the model was trained on
    them: "leftmost" and "tumbler" read no vector, and the first 21719 rows (all-MiniLM-L6-v2's own
    words) are those groma-tiny was trained with."""
    from groma_core import language
    from groma_core.word_vectors import read_table

    words, _ = read_table()
    table, original = set(words), set(words[:21719])
    assert {"beaker", "saucer", "teacup", "nudge", "stapler", "tangerine"} <= table
    assert not {"leftmost", "tumbler", "flask", "frontmost"} & table
    assert words[:21719] == sorted(words[:21719]) and len(words) > 40_000
    lacking = language.training_words() - original
    assert not lacking & set(words[21719:])
