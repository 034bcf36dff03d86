"""Training's word variation: queries reworded with words the lexicons lack, the answer's echo alike."""

from __future__ import annotations

import random
import re
from types import SimpleNamespace

import torch

from groma_core import language
from groma_core.language import LanguageSample, Span, substitute_words
from groma_core.train import TrainSettings, WordVariation
from groma_core.word_vectors import distant_words, read_table, vector_neighbours
from groma_core.world import render_scene


def test_substitute_words_rewrites_query_answer_and_referents_alike_and_leaves_markup_alone():
    sample = LanguageSample(
        task="command2", query="[grounding]Mug first: put the blue mug in the box, not the boxes <roi><refer_box></roi>",
        answer=[Span("the blue mug", [0]), Span(" into ", []), Span("the box", [1])], refer_indices=[], target_indices=[0, 1],
        meta={"referent_texts": ["the blue mug", "the box"], "refs": ["kept"]})
    out = substitute_words(sample, {"mug": "teacup", "box": "ceramic box"})
    assert out.query == ("[grounding]Teacup first: put the blue teacup in the ceramic box, not the boxes "
                         "<roi><refer_box></roi>")
    assert [s.text for s in out.answer] == ["the blue teacup", " into ", "the ceramic box"]
    assert [s.object_indices for s in out.answer] == [[0], [], [1]]
    assert out.meta["referent_texts"] == ["the blue teacup", "the ceramic box"] and out.meta["refs"] == ["kept"]
    assert sample.query.startswith("[grounding]Mug")  # the input is not changed
    assert substitute_words(sample, {}) is sample


def _table(vectors: dict[str, list[float]]) -> tuple[list[str], torch.Tensor]:
    return list(vectors), torch.tensor(list(vectors.values()))


def test_vector_neighbours_keeps_words_on_their_own_class_side_by_a_margin():
    words, table = _table({
        "ball": [1, 0, 0], "sphere": [0.9, 0.1, 0], "box": [0, 1, 0],
        "orb": [0.95, 0.05, 0],        # nearest ball: a stand-in for ball and sphere
        "crate": [0.1, 0.95, 0],       # nearest box
        "boxball": [0.8, 0.2, 0],      # holds "box": its pieces would say box
        "cube": [0.5, 0.5, 0],         # between the two: no margin
        "secret": [0.97, 0.0, 0.0],    # excluded by the caller
        "far": [0, 0, 1],              # like nothing
    })
    out = vector_neighbours(words, table, {"ball": ["ball", "sphere"], "box": ["box"]}, exclude={"secret"},
                            min_similarity=0.5, margin=0.1)
    assert out["ball"][0] == "orb" and set(out["ball"]) == {"orb"}
    assert "sphere" not in out  # orb lies nearer ball: a stand-in goes to the nearest word of its class
    assert out["box"] == ["crate"]
    assert distant_words(words, table, ["ball", "box"], exclude={"secret"}, max_similarity=0.3) == ["far"]


def test_training_variation_on_the_packaged_table_uses_no_training_or_held_out_word():
    words, table = read_table()
    model = SimpleNamespace(word_vectors=SimpleNamespace(words=words, table=table))
    variation = WordVariation.build(model, TrainSettings())
    forbidden = language.training_words() | language.held_out_words()
    assert {"orb", "saucer", "paperback"} <= language.held_out_words()
    assert not language.held_out_words() & language.training_words()
    stand_ins = {w for ws in variation.synonyms.values() for w in ws}
    assert stand_ins and not stand_ins & forbidden and not set(variation.modifiers) & forbidden
    assert "can" not in variation.synonyms  # also the modal verb of "can you ..."
    assert len(variation.modifiers) > 1000
    rng, changed = random.Random(0), 0
    for seed in range(40):
        sample = language.sample_language(render_scene(seed), rng)
        replacements = variation.replacements(sample.query, rng)
        present = set(re.findall(r"[a-z]+", sample.query.lower()))
        assert set(replacements) <= present
        for word, new in replacements.items():
            assert new in variation.synonyms.get(word, []) or new.endswith((" " + word, "-" + word))
        changed += bool(replacements)
    assert 5 < changed < 40  # some queries keep their training wording


def test_no_variation_without_a_table_or_with_both_shares_off():
    words, table = read_table()
    model = SimpleNamespace(word_vectors=SimpleNamespace(words=words, table=table))
    off = TrainSettings(synonym_share=0.0, modifier_share=0.0)
    assert WordVariation.build(model, off) is None
    assert WordVariation.build(SimpleNamespace(word_vectors=None), TrainSettings()) is None
