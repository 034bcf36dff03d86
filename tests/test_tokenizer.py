"""GromaTokenizer against the ids, pieces and strings the original (transformers 4.32) produced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from groma_core.errors import CheckpointError, GromaInputError
from groma_core.tokenizer import (
    GROMA_ADDED_TOKENS,
    REGION_INDEX_TOKENS,
    GromaTokenizer,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def case_c(official_fixture_dir: Path) -> dict:
    return json.loads((official_fixture_dir / "cases" / "case_c_tokenizer.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tok(official_fixture_dir: Path) -> GromaTokenizer:
    return GromaTokenizer.from_pretrained(official_fixture_dir / "checkpoint")


@pytest.fixture(scope="module")
def tok_legacy(official_fixture_dir: Path) -> GromaTokenizer:
    return GromaTokenizer.from_pretrained(official_fixture_dir / "checkpoint", legacy=True)


# Parametrised by index so that a missing fixture skips inside the test instead of failing collection.
ENCODE_CASES = range(13)


def test_fixture_has_13_encode_and_5_decode_cases(case_c: dict) -> None:
    assert len(case_c["encode_cases"]) == 13
    assert len(case_c["decode_cases"]) == 5


def test_reads_settings_and_sizes(tok: GromaTokenizer, tok_legacy: GromaTokenizer, case_c: dict) -> None:
    assert tok.legacy is False and tok_legacy.legacy is True
    assert tok.base_vocab_size == case_c["sentencepiece_vocab_size"] == 32000
    assert len(tok) == case_c["total_vocab_with_added_tokens"] == 32114
    assert tok.add_bos_token is True and tok.add_eos_token is False


def test_special_token_ids(tok: GromaTokenizer, case_c: dict) -> None:
    for token, idx in case_c["special_token_ids"].items():
        assert tok.id_of(token) == idx
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (1, 2, 0, 32000)
    named = [
        tok.pad_token_id, tok.sep_token_id, tok.img_start_token_id, tok.img_end_token_id,
        tok.roi_start_token_id, tok.roi_end_token_id, tok.phrase_start_token_id, tok.phrase_end_token_id,
        tok.image_token_id, tok.region_placeholder_token_id, tok.refer_box_token_id, tok.ground_box_token_id,
        tok.refer_feat_token_id, tok.grounding_token_id,
    ]  # fmt: skip
    assert named == list(range(32000, 32014))
    assert tok.region_index_token_ids == tuple(range(32014, 32114))
    assert [tok.id_of(t) for t in GROMA_ADDED_TOKENS] == list(range(32000, 32114))


def test_region_token_helpers(tok: GromaTokenizer) -> None:
    assert tok.region_token_id(0) == 32014 and tok.region_token_id(99) == 32113
    assert tok.region_index(32021) == 7 and tok.region_index(32113) == 99
    assert tok.region_index(32013) is None and tok.region_index(5) is None
    for bad in (100, -1, 1.0, "3", True):
        with pytest.raises(GromaInputError):
            tok.region_token_id(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("i", ENCODE_CASES)
def test_encode_legacy_false(tok: GromaTokenizer, case_c: dict, i: int) -> None:
    case = case_c["encode_cases"][i]
    assert tok.encode(case["text"]) == case["input_ids"]
    assert ["<s>"] + tok.tokenize(case["text"]) == case["tokens"]
    assert tok.convert_ids_to_tokens(case["input_ids"]) == case["tokens"]


@pytest.mark.parametrize("i", ENCODE_CASES)
def test_encode_legacy_true(tok_legacy: GromaTokenizer, case_c: dict, i: int) -> None:
    case = case_c["encode_cases"][i]
    assert tok_legacy.encode(case["text"]) == case["input_ids_if_legacy_true"]


@pytest.mark.parametrize("i", ENCODE_CASES)
def test_decode_encode_cases(tok: GromaTokenizer, case_c: dict, i: int) -> None:
    case = case_c["encode_cases"][i]
    assert tok.decode(case["input_ids"]) == case["decoded_skip_special_tokens_false"]
    assert tok.decode(case["input_ids"], skip_special_tokens=True) == case["decoded_skip_special_tokens_true"]


@pytest.mark.parametrize("i", range(5))
def test_decode_cases(tok: GromaTokenizer, case_c: dict, i: int) -> None:
    case = case_c["decode_cases"][i]
    assert tok.convert_ids_to_tokens(case["ids"]) == case["tokens"]
    assert tok.decode(case["ids"]) == case["decoded_skip_special_tokens_false"]
    assert tok.decode(case["ids"], skip_special_tokens=True) == case["decoded_skip_special_tokens_true"]


def test_skip_special_tokens_keeps_groma_tokens(tok: GromaTokenizer) -> None:
    # 4.32 registers only bos/eos/unk/pad as special: the other 113 added tokens survive skipping.
    ids = [1, 32006, 435, 32007, 32004, 32017, 32005, 32000, 0, 2]
    assert tok.decode(ids, skip_special_tokens=True) == "<p> blue </p> <roi> <r3> </roi>"
    assert tok.convert_ids_to_tokens(ids, skip_special_tokens=True) == ["<p>", "▁blue", "</p>", "<roi>", "<r3>", "</roi>"]


def test_encode_options_and_tensors(tok: GromaTokenizer) -> None:
    assert tok.encode("the", add_bos=False) == tok.encode("the")[1:]
    assert tok.encode("the", add_eos=True)[-1] == 2
    np = pytest.importorskip("numpy")
    ids = np.array([32006, 435, 32007], dtype=np.int64)
    assert tok.decode(ids) == "<p> blue </p>"


def test_bad_input(tok: GromaTokenizer) -> None:
    for bad in (None, 3, b"bytes", ["a"]):
        with pytest.raises(GromaInputError):
            tok.encode(bad)  # type: ignore[arg-type]
    for bad_ids in ("abc", [1, "2"], [1, 2.5], [32114], [-1], None):
        with pytest.raises(GromaInputError):
            tok.decode(bad_ids)  # type: ignore[arg-type]
    with pytest.raises(GromaInputError):
        tok.id_of("<not-a-token>")
    assert tok.convert_tokens_to_ids("<not-a-token>") == tok.unk_token_id


def test_save_pretrained_round_trip(tok: GromaTokenizer, official_fixture_dir: Path, tmp_path: Path) -> None:
    tok.save_pretrained(tmp_path)
    for name in ("tokenizer.model", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_bytes() == (official_fixture_dir / "checkpoint" / name).read_bytes(), name
    again = GromaTokenizer.from_pretrained(tmp_path)
    text = "Locate <p>the blue mug</p> in the image.</s>USER:"
    assert again.encode(text) == tok.encode(text)


def test_missing_or_broken_files(official_fixture_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        GromaTokenizer.from_pretrained(tmp_path)
    src = official_fixture_dir / "checkpoint"
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    added = json.loads((src / "added_tokens.json").read_text())
    added["<r99>"] = 40000  # a gap: 4.32 refuses such files
    (tmp_path / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(CheckpointError):
        GromaTokenizer.from_pretrained(tmp_path)
    del added["<r99>"]  # a Groma token missing
    (tmp_path / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(CheckpointError):
        GromaTokenizer.from_pretrained(tmp_path)


SENTENCES = [
    "pick up the blue mug on the left",
    "put the red box next to the green ball",
    "describe the region 3 of the image",
    "the yellow block is right of the white plate",
    "Locate the blue mug in the image.",
    "A chat between a curious user and an artificial intelligence assistant.",
    "move 1200 mm then 3456 mm, then 789 more",
] * 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[GromaTokenizer, Path]:
    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer(SENTENCES, out, vocab_size=320), out


def test_train_tokenizer_layout(trained: tuple[GromaTokenizer, Path]) -> None:
    tok, out = trained
    base = tok.base_vocab_size
    assert base == 320 and len(tok) == base + 114 and tok.legacy is False
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token_id == base and tok.id_of("<sep>") == base + 1 and tok.grounding_token_id == base + 13
    assert tok.region_token_id(0) == base + 14 and tok.region_token_id(99) == base + 113
    assert tok.region_index(base + 14 + 42) == 42
    assert json.loads((out / "added_tokens.json").read_text()) == {t: base + i for i, t in enumerate(GROMA_ADDED_TOKENS)}
    assert GROMA_ADDED_TOKENS[:14] == (
        "[PAD]", "<sep>", "<img>", "</img>", "<roi>", "</roi>", "<p>", "</p>",
        "<image>", "<region>", "<refer_box>", "<ground_box>", "<refer_feat>", "[grounding]",
    )  # fmt: skip
    assert GROMA_ADDED_TOKENS[14:] == REGION_INDEX_TOKENS
    assert sorted(p.name for p in out.iterdir()) == [
        "added_tokens.json", "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json",
    ]  # fmt: skip


def test_train_tokenizer_round_trip(trained: tuple[GromaTokenizer, Path]) -> None:
    tok, out = trained
    again = GromaTokenizer.from_pretrained(out)
    for text in ["pick up the blue mug", "Move 42 blocks, café 🤖", "the mug<roi><r12></roi> is here"]:
        ids = tok.encode(text)
        assert again.encode(text) == ids
        assert ids[0] == 1 and max(ids) < len(tok)
        # Plain text (no added tokens) decodes back exactly (byte fallback covers unseen characters).
        if "<" not in text:
            assert tok.decode(ids, skip_special_tokens=True) == text
    ids = tok.encode("pick up the blue mug")
    assert tok.id_of("▁") not in ids[:2]  # no lone "▁" before ordinary text
    assert tok.decode(tok.encode("<p>the mug</p><roi><r3></roi>"), skip_special_tokens=True) == " <p> the mug </p> <roi> <r3> </roi>"
    # Digits are split one by one (split_digits).
    assert [p for p in tok.tokenize("1234") if p.strip("▁")] == ["1", "2", "3", "4"]


def test_train_tokenizer_bad_input(tmp_path: Path) -> None:
    with pytest.raises(GromaInputError):
        train_tokenizer(["ok", 3], tmp_path, 300)  # type: ignore[list-item]
    with pytest.raises(GromaInputError):
        train_tokenizer("a single string", tmp_path, 300)
    with pytest.raises(GromaInputError):
        train_tokenizer(SENTENCES, tmp_path, 10)
    with pytest.raises(GromaInputError):
        train_tokenizer([], tmp_path, 300)
