"""Prompt template, task queries, training labels and answer parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from groma_core.errors import GromaInputError
from groma_core.prompts import (
    BRIEF_REGION_CAPTION_TEMPLATES,
    DEFAULT_TEMPLATE,
    DETAILED_REGION_CAPTION_TEMPLATES,
    GROUNDED_CAPTION_TEMPLATES,
    MULTI_OBJECT_TEMPLATES,
    REC_TEMPLATES,
    REFER_MARKUP,
    ParsedAnswer,
    ParsedPhrase,
    RegionQuery,
    build_inference_prompt,
    build_prompt,
    build_training_ids,
    format_answer,
    grounded_caption_query,
    grounding_query,
    insert_user_regions,
    multi_object_query,
    parse_answer,
    rec_query,
    region_caption_query,
    strip_markup,
)
from groma_core.tokenizer import IGNORE_INDEX, GromaTokenizer

PREFIX = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: Here is an image with region crops from it. "
    "Image: <image>. Regions: <region>. ASSISTANT: Thank you for the image! How can I assist you with it?</s>"
)


@pytest.fixture(scope="module")
def tok(official_fixture_dir: Path) -> GromaTokenizer:
    return GromaTokenizer.from_pretrained(official_fixture_dir / "checkpoint")


def _case(official_fixture_dir: Path, name: str) -> dict:
    return json.loads((official_fixture_dir / "cases" / name).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------- template and fixture cases


def test_prompt_string_layout() -> None:
    assert build_inference_prompt("Q?") == PREFIX + "USER: Q? ASSISTANT:"
    two = build_prompt([("Q1", "A1"), ("Q2", None)])
    assert two == PREFIX + "USER: Q1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:"
    assert build_prompt([("Q1", "A1")], first_round=False).endswith("questions. USER: Q1 ASSISTANT: A1</s>")
    assert build_prompt([("Q", "A")], template=DEFAULT_TEMPLATE).endswith("it? USER: Q ASSISTANT: A ")


@pytest.mark.parametrize(
    ("case_file", "query", "expected_query", "n_ids"),
    [
        ("case_a_rec.json", lambda: rec_query("the blue mug"), "Locate <p>the blue mug</p> in the image.", 85),
        ("case_b_region_caption.json", region_caption_query, "Please briefly describe <roi><refer_box></roi><refer_feat>.", 82),
    ],
)
def test_case_prompt_and_ids(tok: GromaTokenizer, official_fixture_dir: Path, case_file, query, expected_query, n_ids) -> None:
    case = _case(official_fixture_dir, case_file)
    assert query() == case["query"] == expected_query
    prompt = build_inference_prompt(case["query"])
    assert prompt == case["prompt"]  # byte-exact
    ids = tok.encode(prompt)
    assert ids == case["input_ids"] and len(ids) == case["num_input_ids"] == n_ids
    assert tok.convert_ids_to_tokens(ids) == case["input_tokens"]


def test_case_b_refer_box_slot(tok: GromaTokenizer, official_fixture_dir: Path) -> None:
    case = _case(official_fixture_dir, "case_b_region_caption.json")
    # The original replaces <refer_box> by <rK> (K = 7) in place, at position 76.
    patched = tok.encode(case["prompt"])
    (pos,) = case["input_ids_changed_in_place_positions"]
    assert patched[pos] == tok.refer_box_token_id
    patched[pos] = tok.region_token_id(case["refer"]["K"])
    assert patched == case["input_ids_after_generate_prefix"]


def test_generated_answers_of_cases_parse(tok: GromaTokenizer, official_fixture_dir: Path) -> None:
    case = _case(official_fixture_dir, "case_a_rec.json")
    raw = tok.decode(case["generate"]["generated_ids"])
    assert raw == case["generate"]["decoded_skip_special_tokens_false"]
    parsed = parse_answer(raw, case["num_regions"])
    # A stray <r89> (no <roi>) is markup, removed; no phrase.
    assert parsed.text == "acicialac crops crops crops crops" and parsed.phrases == ()


def test_bad_turns() -> None:
    for bad in ([("Q", None), ("Q2", None)], [("", None)], [("Q",)], "Q", [("Q", 3)]):
        with pytest.raises(GromaInputError):
            build_prompt(bad)  # type: ignore[arg-type]
    with pytest.raises(GromaInputError):
        build_prompt([], first_round=False)


def test_prefix_prompt_ids_are_a_prefix(tok: GromaTokenizer) -> None:
    prefix = build_prompt([])
    assert prefix == PREFIX
    prefix_ids = tok.encode(prefix)
    for query in ("Locate <p>the cup</p> in the image.", "[grounding]hi", "Please briefly describe <roi><refer_box></roi><refer_feat>."):
        assert tok.encode(build_inference_prompt(query))[: len(prefix_ids)] == prefix_ids


# ---------------------------------------------------------------------- queries


def test_query_builders() -> None:
    assert len(REC_TEMPLATES) == 6 and len(MULTI_OBJECT_TEMPLATES) == 6
    assert len(BRIEF_REGION_CAPTION_TEMPLATES) == 4 and len(DETAILED_REGION_CAPTION_TEMPLATES) == 5
    assert len(GROUNDED_CAPTION_TEMPLATES) == 7
    assert rec_query("  the cup ", 4) == "Which region matches the description <p>the cup</p>?"
    assert multi_object_query("cup") == "Locate all <p>cup</p> in this image."
    assert grounding_query("What is on the table?") == "[grounding]What is on the table?"
    assert grounded_caption_query() == "[grounding]Give me a concise description of the image."
    assert region_caption_query(0) == "What is <roi><refer_box></roi><refer_feat>?"
    assert region_caption_query(1, detailed=True) == "Please describe <roi><refer_box></roi><refer_feat> in details."
    # User text cannot smuggle markup in (a second <image> would break the forward pass).
    assert rec_query("the <image> mug</p>") == "Locate <p>the mug</p> in the image."
    assert strip_markup("a </s>[PAD] b<r3>") == "a b"
    for bad in (lambda: rec_query(""), lambda: rec_query("<image>"), lambda: rec_query(3), lambda: rec_query("x", 6),
                lambda: grounding_query(" "), lambda: region_caption_query(-1)):  # fmt: skip
        with pytest.raises(GromaInputError):
            bad()


def test_insert_user_regions() -> None:
    q = insert_user_regions("Is region 1 left of Box #0?", 2)
    assert q == RegionQuery(f"Is {REFER_MARKUP} left of {REFER_MARKUP}?", (1, 0))
    assert insert_user_regions("what is region 0 next to region 0", 1).refer_order == (0, 0)
    assert insert_user_regions("", 1) == RegionQuery("Please briefly describe <roi><refer_box></roi><refer_feat>.", (0,))
    assert insert_user_regions("what color is it?", 1) == RegionQuery(f"what color is it? Region: {REFER_MARKUP}.", (0,))
    # Without boxes "region 7" is just words.
    assert insert_user_regions("move to region 7", 0) == RegionQuery("move to region 7", ())
    assert insert_user_regions("describe region 0 <refer_feat>", 1).text == f"describe {REFER_MARKUP}"
    for command, n in (("region 2", 2), ("pick it", 2), ("", 0), (None, 1), ("x", -1), ("x", True)):
        with pytest.raises(GromaInputError):
            insert_user_regions(command, n)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- training targets


def test_build_training_ids(tok: GromaTokenizer) -> None:
    turns = [("Locate <p>the blue mug</p> in the image.", "<roi><r3></roi>"), ("[grounding]Where?", "<p>A mug</p><roi><r3></roi>.")]
    ids, labels = build_training_ids(tok, turns)
    assert len(ids) == len(labels) and tok.sep_token_id not in ids
    # Same ids as the plain prompt, except the stripped spaces at the former <sep> positions.
    plain = tok.encode(build_prompt(turns))
    assert tok.decode(ids) == tok.decode(plain)
    supervised = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ids, labels))
    answer1 = tok.encode("<roi><r3></roi>", add_bos=False)[1:]  # drop the lone "▁" of the text start
    assert answer1 == [tok.roi_start_token_id, tok.region_token_id(3), tok.roi_end_token_id]
    assert supervised[:4] == answer1 + [tok.eos_token_id]
    assert tok.decode(supervised[4:]) == "<p> A mug </p> <roi> <r3> </roi> .</s>"
    # The </s> after the fixed "Thank you..." answer and everything of the prompt are not supervised.
    eos_positions = [p for p, t in enumerate(ids) if t == tok.eos_token_id]
    assert len(eos_positions) == 3 and labels[eos_positions[0]] == IGNORE_INDEX
    assert all(labels[p] == tok.eos_token_id for p in eos_positions[1:])
    assert labels[: eos_positions[0] + 1] == [IGNORE_INDEX] * (eos_positions[0] + 1)
    for bad in ([], [("Q", None)], [("Q", "a<sep>b")], "Q"):
        with pytest.raises(GromaInputError):
            build_training_ids(tok, bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- answers


def _check_spans(parsed) -> None:
    for p in parsed.phrases:
        assert parsed.text[p.start : p.end] == p.text


def test_format_answer() -> None:
    pieces = [("A dog", [4]), " is jumping to catch ", ("a frisbee", [7, 2]), "."]
    assert format_answer(pieces) == "<p>A dog</p><roi><r4></roi> is jumping to catch <p>a frisbee</p><roi><r7><r2></roi>."
    assert format_answer([("", [3])]) == "<roi><r3></roi>"
    assert format_answer(["plain", ("", [])]) == "plain"
    for bad in ([("x", [100])], [("x", "3")], [("<p>x", [1])], [3], "text", [("x", [True])]):
        with pytest.raises(GromaInputError):
            format_answer(bad)  # type: ignore[arg-type]


def test_parse_decoded_grounded_caption_with_spaces() -> None:
    raw = (
        "<p> A dog </p> <roi> <r4> </roi> is jumping to catch <p> a frisbee </p> <roi> <r7> </roi> over "
        "<p> a fallen man </p> <roi> <r1> </roi> .</s>"
    )
    parsed = parse_answer(raw, 10)
    assert parsed.text == "A dog is jumping to catch a frisbee over a fallen man."
    assert [(p.text, p.regions) for p in parsed.phrases] == [("A dog", (4,)), ("a frisbee", (7,)), ("a fallen man", (1,))]
    assert (parsed.phrases[1].start, parsed.phrases[1].end) == (26, 35)
    assert parsed.regions == (4, 7, 1)
    _check_spans(parsed)


def test_parse_round_trips_format_answer() -> None:
    pieces = [("The blue mug", [3, 5]), " is left of ", ("the plate", [0]), ", near ", ("it", [3]), "!"]
    parsed = parse_answer(format_answer(pieces), 6)
    assert parsed.text == "The blue mug is left of the plate, near it!"
    assert [(p.text, p.regions) for p in parsed.phrases] == [("The blue mug", (3, 5)), ("the plate", (0,)), ("it", (3,))]
    assert parsed.regions == (3, 5, 0)
    _check_spans(parsed)


def test_parse_multiple_regions_and_out_of_range() -> None:
    parsed = parse_answer("<p> mugs </p> <roi> <r2> <r39> <r5> <r2> </roi> </s>", 39)
    (phrase,) = parsed.phrases
    assert phrase == ParsedPhrase("mugs", 0, 4, (2, 5), (39,))
    assert parsed.dropped_regions == (39,)
    only_bad = parse_answer("<p> mug </p> <roi> <r89> </roi>", 39)
    assert only_bad.phrases[0].regions == () and only_bad.regions == () and only_bad.text == "mug"


def test_parse_bare_rec_answer() -> None:
    raw = "<roi> <r12> </roi> </s>"
    assert parse_answer(raw, 20).phrases == (ParsedPhrase("", 0, 0, (12,)),)
    parsed = parse_answer(raw, 20, default_phrase="the blue mug")
    assert parsed.text == "the blue mug" and parsed.phrases == (ParsedPhrase("the blue mug", 0, 12, (12,)),)
    two = parse_answer("<roi><r3><r1></roi><roi><r3><r30></roi>", 20, default_phrase=" cups ")
    assert two.text == "cups" and two.phrases == (ParsedPhrase("cups", 0, 4, (3, 1), (30,)),)
    # A bare block inside other text: a zero-width phrase where it stood.
    mid = parse_answer("The mug <roi> <r12> <r7> </roi> is here .", 20, default_phrase="ignored")
    assert mid.text == "The mug is here ." and mid.phrases == (ParsedPhrase("", 7, 7, (12, 7)),)


def test_parse_no_markup_and_unicode() -> None:
    assert parse_answer("A brown dog lying on a couch.</s>", 5).text == "A brown dog lying on a couch."
    assert parse_answer("  two   spaces\n and newline  ", 5).text == "two spaces and newline"
    assert parse_answer("", 5).text == ""
    parsed = parse_answer("Le <p> café 蓝色的杯子 🤖 </p> <roi> <r2> </roi> , très bien", 3)
    assert parsed.text == "Le café 蓝色的杯子 🤖, très bien"
    assert parsed.phrases[0].text == "café 蓝色的杯子 🤖"
    _check_spans(parsed)


def test_parse_malformed_markup() -> None:
    assert parse_answer("<p> unclosed phrase", 5) == ParsedAnswer("unclosed phrase", (), "<p> unclosed phrase")
    assert parse_answer("<p> no roi </p> here", 5).text == "no roi here"
    assert parse_answer("<p> x </p> <roi> </roi> y", 5).phrases == ()
    truncated = parse_answer("<p> the cup </p> <roi> <r1> <r2>", 5)  # generation cut by max_new_tokens
    assert truncated.phrases == (ParsedPhrase("the cup", 0, 7, (1, 2)),)
    stray = parse_answer("<s> <image> the <r4> cup [PAD] <unk>", 5)
    assert stray.text == "the cup" and stray.phrases == ()
    after_eos = parse_answer("<p> a </p> <roi> <r1> </roi> </s> <p> b </p> <roi> <r2> </roi>", 5)
    assert after_eos.regions == (1,)
    for bad in ((None, 3), ("x", -1), ("x", 1.5)):
        with pytest.raises(GromaInputError):
            parse_answer(*bad)  # type: ignore[arg-type]
    with pytest.raises(GromaInputError):
        parse_answer("x", 3, default_phrase=3)  # type: ignore[arg-type]
