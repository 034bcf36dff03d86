"""Groma's text formats: conversation template, task queries, training targets and answer parsing.

Everything here reproduces the original (FoundationVision/Groma, ``groma/data/conversation.py``,
``groma/data/datasets/*.py``, ``groma/eval/*.py``) as recorded in the project spec §2:

* the ``llava`` conversation template with the fixed first round every sample starts with
  (:func:`build_prompt`; byte-exact against the fixture's case A and B prompts);
* task queries: REC (:func:`rec_query`), multi-object grounding (:func:`multi_object_query`), region
  captioning with a user box (:func:`region_caption_query`), grounded captioning/chat
  (:func:`grounding_query`, :func:`grounded_caption_query`);
* training ids and labels (:func:`build_training_ids`, spec §2.4);
* Groma markup in answers: :func:`format_answer` writes it, :func:`parse_answer` reads a decoded answer.

Additions of this project (not in the original), documented where they are defined: removal of Groma
markup from user-supplied text (:func:`strip_markup`) and :func:`insert_user_regions` for commands that
come with user boxes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import GromaInputError
from .tokenizer import IGNORE_INDEX, NUM_REGION_INDEX_TOKENS, GromaTokenizer

# ---------------------------------------------------------------------- conversation template

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class ConversationTemplate:
    """A ``SeparatorStyle.TWO`` conversation: ``system + sep``, then per message
    ``role + ": " + message + (sep after a user message, sep2 after an assistant message)``;
    an empty message renders as ``role + ":"`` (how a prompt ends for generation)."""

    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str

    def render(self, messages: Sequence[tuple[str, str | None]]) -> str:
        """Render ``(role, message)`` pairs; roles must alternate user/assistant, starting with user."""
        out = [self.system, self.sep]
        for i, (role, message) in enumerate(messages):
            if role != self.roles[i % 2]:
                raise GromaInputError(f"message {i} has role {role!r}, expected {self.roles[i % 2]!r}")
            if message:
                out.append(f"{role}: {message}{self.sep if i % 2 == 0 else self.sep2}")
            else:
                out.append(f"{role}:")
        return "".join(out)


LLAVA_TEMPLATE = ConversationTemplate(system=SYSTEM_PROMPT, roles=("USER", "ASSISTANT"), sep=" ", sep2="</s>")
"""``conv_templates['llava']``: fine-tuning, every eval script and ``run_groma.py``."""
DEFAULT_TEMPLATE = ConversationTemplate(system=SYSTEM_PROMPT, roles=("USER", "ASSISTANT"), sep=" ", sep2=" ")
"""``conv_templates['default']``: alignment pretraining (``sep2`` is a space)."""

FIRST_ROUND_USER = "Here is an image with region crops from it. Image: <image>. Regions: <region>."
FIRST_ROUND_ASSISTANT = "Thank you for the image! How can I assist you with it?"

# ---------------------------------------------------------------------- markup

IMAGE_PLACEHOLDER = "<image>"
REGION_PLACEHOLDER = "<region>"
GROUNDING_PREFIX = "[grounding]"
REFER_MARKUP = "<roi><refer_box></roi><refer_feat>"
"""What stands for one user box in a query; the box itself goes to the model as ``refer_boxes``."""

# Every token string the tokenizer would turn into a special id (the 114 + bos/eos/unk).
_MARKUP_RE = re.compile(
    r"<r\d+>|</?p>|</?roi>|</?img>|</?s>|<unk>|<sep>|<image>|<region>|<refer_box>|<ground_box>|<refer_feat>"
    r"|\[grounding\]|\[PAD\]"
)
_REGION_TOKEN_RE = re.compile(r"<r(\d+)>")
_WS_RE = re.compile(r"\s+")


def strip_markup(text: str) -> str:
    """Remove Groma/Llama token strings (``<image>``, ``</s>``, ``<r3>``, ``[grounding]``, ...) from user text.

    Project addition: the original passes user text through unchanged, but such strings become special
    ids (a second ``<image>`` breaks the forward pass).  Runs of whitespace left behind become one space.
    """
    if not isinstance(text, str):
        raise GromaInputError(f"text must be a str, got {type(text).__name__}")
    if not _MARKUP_RE.search(text):
        return text
    return _WS_RE.sub(" ", _MARKUP_RE.sub(" ", text)).strip()


def _user_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise GromaInputError(f"{what} must be a str, got {type(text).__name__}")
    cleaned = strip_markup(text).strip()
    if not cleaned:
        raise GromaInputError(f"{what} is empty")
    return cleaned


def build_prompt(
    turns: Sequence[tuple[str, str | None]],
    *,
    template: ConversationTemplate = LLAVA_TEMPLATE,
    first_round: bool = True,
) -> str:
    """The prompt string for ``turns`` = ``[(user, assistant), ..., (user, None)]``.

    The fixed first round (``FIRST_ROUND_USER``/``FIRST_ROUND_ASSISTANT``) is put in front unless
    ``first_round`` is false.  Only the last assistant message may be ``None``; it renders as
    ``"ASSISTANT:"`` (the generation prompt).  Messages are used as given (no markup removal: queries
    from the builders below already are clean).  Example, one query ``q``::

        A chat between ... questions. USER: Here is an image with region crops from it. Image: <image>.
        Regions: <region>. ASSISTANT: Thank you for the image! How can I assist you with it?</s>USER: q ASSISTANT:

    (one line, no newlines).  ``build_prompt([])`` is the shared prefix of every prompt: system prompt and
    first round, ending in ``"</s>"`` (4.32 splits at ``</s>``, so its ids are a prefix of every prompt's ids).
    """
    if isinstance(turns, (str, bytes)) or not isinstance(turns, Sequence):
        raise GromaInputError("turns must be a sequence of (user, assistant) pairs")
    messages: list[tuple[str, str | None]] = []
    user_role, assistant_role = template.roles
    if first_round:
        messages += [(user_role, FIRST_ROUND_USER), (assistant_role, FIRST_ROUND_ASSISTANT)]
    for i, turn in enumerate(turns):
        if not isinstance(turn, tuple) or len(turn) != 2:
            raise GromaInputError(f"turn {i} must be a (user, assistant) tuple")
        user, assistant = turn
        if not isinstance(user, str) or not user:
            raise GromaInputError(f"turn {i}: user message must be a non-empty str")
        if assistant is None:
            if i != len(turns) - 1:
                raise GromaInputError(f"turn {i}: only the last assistant message may be None")
        elif not isinstance(assistant, str):
            raise GromaInputError(f"turn {i}: assistant message must be a str or None")
        messages += [(user_role, user), (assistant_role, assistant)]
    if not messages:
        raise GromaInputError("no turns and no first round: nothing to render")
    return template.render(messages)


def build_inference_prompt(query: str, *, template: ConversationTemplate = LLAVA_TEMPLATE) -> str:
    """``build_prompt([(query, None)])``: the single-query prompt of ``run_groma.py``."""
    return build_prompt([(query, None)], template=template)


# ---------------------------------------------------------------------- task queries (spec §2.3)

REC_TEMPLATES: tuple[str, ...] = (
    "Locate {} in the image.",
    "Can you spot {} in the photograph?",
    "Identify where {} is located in the picture.",
    "Please detect {} in the picture.",
    "Which region matches the description {}?",
    "Please identify the object that corresponds to {}.",
)
"""REC (``refcoco_rec.py``, ``grit.py``, ``eval_rec.py``); ``{}`` = ``<p>expression</p>``."""

MULTI_OBJECT_TEMPLATES: tuple[str, ...] = (
    "Locate all {} in this image.",
    "Identify all instances of {} in the photo.",
    "Find all instances of {} in the image.",
    "Point out all the {} visible in this picture.",
    "Detect and list each {} that appears in this photo.",
    "What is the position of each {} in the image?",
)
"""Multi-object grounding (``coco.py``, LVIS eval); ``{}`` = ``<p>class name</p>``."""

BRIEF_REGION_CAPTION_TEMPLATES: tuple[str, ...] = (
    "What is {}?",
    "Please briefly describe {}.",
    "Provide a short description for {}.",
    "Please give a concise description of region {}.",
)
"""Visual Genome region captions (``visual_genome.py``, ``model_vg.py``); ``{}`` = ``REFER_MARKUP``."""

DETAILED_REGION_CAPTION_TEMPLATES: tuple[str, ...] = (
    "Can you provide me with a detailed description of {}?",
    "Please describe {} in details.",
    "I'm curious about {} in the photo. Can you describe it in detail?",
    "Please give a comprehensive description of the object {}.",
    "What does the object {} in the picture look like? Could you give me a detailed description?",
)
"""RefCOCOg region captions (``refcoco_cap.py``, ``model_refcocog.py``); ``{}`` = ``REFER_MARKUP``."""

GROUNDED_CAPTION_TEMPLATES: tuple[str, ...] = (
    "Give me a concise description of the image.",
    "Please briefly summarize the content of this image.",
    "What does this picture show? Please summarize briefly.",
    "Can you give me a quick overview of what's depicted in this image?",
    "Could you describe the key elements in this photograph?",
    "Offer a brief explanation of what this image represents.",
    "Sum up the contents of this picture in one or two sentences.",
)
"""Grounded captioning (``flickr.py``); the query is ``"[grounding]" + template``."""


def _template(templates: tuple[str, ...], index: int, what: str) -> str:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(templates):
        raise GromaInputError(f"{what} template_index must be an int in [0, {len(templates)}), got {index!r}")
    return templates[index]


def phrase_markup(text: str) -> str:
    """``<p>text</p>``."""
    return f"<p>{text}</p>"


def rec_query(expression: str, template_index: int = 0) -> str:
    """REC query, e.g. ``rec_query("the blue mug")`` -> ``"Locate <p>the blue mug</p> in the image."``.

    The expression is user text: markup is removed and outer whitespace stripped.
    """
    expr = _user_text(expression, "expression")
    return _template(REC_TEMPLATES, template_index, "REC").format(phrase_markup(expr))


def multi_object_query(class_name: str, template_index: int = 0) -> str:
    """Multi-object grounding query, e.g. ``"Locate all <p>cup</p> in this image."``."""
    name = _user_text(class_name, "class name")
    return _template(MULTI_OBJECT_TEMPLATES, template_index, "multi-object").format(phrase_markup(name))


def region_caption_query(template_index: int = 1, detailed: bool = False) -> str:
    """Region caption query for one user box (passed separately as ``refer_boxes``).

    ``detailed`` picks the RefCOCOg list, else the Visual Genome list.  The default (brief, index 1) is
    ``"Please briefly describe <roi><refer_box></roi><refer_feat>."`` -- the fixture's case B query and
    the maintainers' recommended prompt.
    """
    templates = DETAILED_REGION_CAPTION_TEMPLATES if detailed else BRIEF_REGION_CAPTION_TEMPLATES
    return _template(templates, template_index, "region caption").format(REFER_MARKUP)


def grounding_query(text: str) -> str:
    """``"[grounding]" + text`` (no space: the original writes it that way), asking for a grounded answer."""
    return GROUNDING_PREFIX + _user_text(text, "text")


def grounded_caption_query(template_index: int = 0) -> str:
    """``"[grounding]Give me a concise description of the image."`` and the other flickr templates."""
    return GROUNDING_PREFIX + _template(GROUNDED_CAPTION_TEMPLATES, template_index, "grounded caption")


# ---------------------------------------------------------------------- user regions in commands

_MENTION_RE = re.compile(r"\b(?:region|box)\s*#?\s*(\d+)\b", re.IGNORECASE)


@dataclass(frozen=True)
class RegionQuery:
    """A query with user boxes: ``text`` holds one ``REFER_MARKUP`` per entry of ``refer_order``;
    ``refer_order[i]`` is the index of the user region whose box must be passed ``i``-th in
    ``refer_boxes`` (the original fills ``<refer_box>`` slots in order of ``refer_boxes``)."""

    text: str
    refer_order: tuple[int, ...]


def insert_user_regions(command: str, num_regions: int, *, caption_template_index: int = 1) -> RegionQuery:
    """Turn mentions of user regions in ``command`` into Groma's referring markup (project addition).

    A mention is ``region N``, ``box N`` or ``region #N`` (case-insensitive, ``N`` a decimal index); each
    one, in order of appearance, is replaced by ``REFER_MARKUP`` and ``N`` is appended to
    ``refer_order`` (a region mentioned twice is referred twice).  Groma markup typed by the user is
    removed first (:func:`strip_markup`).

    * ``num_regions == 0``: no boxes, so mentions are ordinary words; the command is returned cleaned.
    * a mention ``N >= num_regions`` -> :class:`GromaInputError`.
    * exactly one region and no mention: an empty command becomes the region caption query
      (:func:`region_caption_query`); otherwise the region is attached in the same style as the first
      round's ``"Regions: <region>."``: ``"{command} Region: <roi><refer_box></roi><refer_feat>."``.
    * several regions and no mention -> :class:`GromaInputError` (the boxes would be ignored silently).

    Example: ``insert_user_regions("is region 1 left of region 0?", 2)`` ->
    ``RegionQuery("is <roi><refer_box></roi><refer_feat> left of <roi><refer_box></roi><refer_feat>?", (1, 0))``.
    """
    if not isinstance(command, str):
        raise GromaInputError(f"command must be a str, got {type(command).__name__}")
    if isinstance(num_regions, bool) or not isinstance(num_regions, int) or num_regions < 0:
        raise GromaInputError(f"num_regions must be an int >= 0, got {num_regions!r}")
    if num_regions > NUM_REGION_INDEX_TOKENS:
        raise GromaInputError(f"at most {NUM_REGION_INDEX_TOKENS} user regions, got {num_regions}")
    text = strip_markup(command).strip()
    if num_regions == 0:
        if not text:
            raise GromaInputError("command is empty")
        return RegionQuery(text, ())
    order: list[int] = []

    def replace(m: re.Match[str]) -> str:
        k = int(m.group(1))
        if k >= num_regions:
            raise GromaInputError(f"command mentions {m.group(0)!r} but only {num_regions} region(s) were given")
        order.append(k)
        return REFER_MARKUP

    replaced = _MENTION_RE.sub(replace, text)
    if order:
        return RegionQuery(replaced, tuple(order))
    if num_regions > 1:
        raise GromaInputError(f"{num_regions} regions were given but the command mentions none ('region 0', ...)")
    if not text:
        return RegionQuery(region_caption_query(caption_template_index), (0,))
    return RegionQuery(f"{text} Region: {REFER_MARKUP}.", (0,))


# ---------------------------------------------------------------------- training targets (spec §2.4)


def _check_answer_pieces(pieces: object) -> list[tuple[str, tuple[int, ...]]]:
    if isinstance(pieces, (str, bytes)) or not isinstance(pieces, Sequence):
        raise GromaInputError("pieces must be a sequence of str or (text, region indices)")
    out = []
    for i, piece in enumerate(pieces):
        if isinstance(piece, str):
            text, regions = piece, ()
        elif isinstance(piece, tuple) and len(piece) == 2 and isinstance(piece[0], str):
            text, regions = piece
            if isinstance(regions, (str, bytes)) or not isinstance(regions, Sequence):
                raise GromaInputError(f"piece {i}: region indices must be a sequence of ints")
            regions = tuple(regions)
            for k in regions:
                if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < NUM_REGION_INDEX_TOKENS:
                    raise GromaInputError(f"piece {i}: region index must be an int in [0, {NUM_REGION_INDEX_TOKENS}), got {k!r}")
        else:
            raise GromaInputError(f"piece {i} must be a str or a (text, region indices) tuple")
        if _MARKUP_RE.search(text):
            raise GromaInputError(f"piece {i}: text contains Groma markup: {text!r}")
        out.append((text, regions))
    return out


def format_answer(pieces: Sequence[str | tuple[str, Sequence[int]]]) -> str:
    """Render an answer with Groma markup from ``pieces``, concatenated verbatim (spaces are the caller's).

    A piece is a plain ``str`` or ``(text, region_indices)``: with regions and text it becomes
    ``<p>text</p><roi><r3><r5></roi>``; with regions and empty text a bare ``<roi><r3></roi>`` (REC /
    multi-object answers); without regions just ``text``.  This is the form the original's datasets
    produce after ``<ground_box>`` is replaced by the matched ``<rK>``.  Example::

        format_answer([("A dog", [4]), " is jumping to catch ", ("a frisbee", [7]), "."])
        == "<p>A dog</p><roi><r4></roi> is jumping to catch <p>a frisbee</p><roi><r7></roi>."
    """
    out = []
    for text, regions in _check_answer_pieces(pieces):
        if not regions:
            out.append(text)
            continue
        roi = "<roi>" + "".join(f"<r{k}>" for k in regions) + "</roi>"
        out.append(phrase_markup(text) + roi if text else roi)
    return "".join(out)


def build_training_ids(
    tokenizer: GromaTokenizer,
    turns: Sequence[tuple[str, str]],
    *,
    template: ConversationTemplate = LLAVA_TEMPLATE,
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for a training sample, as the original builds them (spec §2.4).

    The prompt is the fixed first round followed by ``turns`` (every assistant answer given), with each
    answer after the first round wrapped as ``<sep>answer<sep>``; it is tokenised (bos, 4.32 rules -- so
    the whitespace around ``<sep>`` is stripped like around any added token), labels are the ids inside
    ``<sep>...<sep>`` pairs and ``IGNORE_INDEX`` (-100) elsewhere, then every ``</s>`` except the first
    (the one closing the fixed "Thank you..." answer) is supervised with the eos id, and finally all
    ``<sep>`` tokens are deleted from both lists.  ``<image>``/``<region>`` stay single placeholders
    (the model expands them and gives the expansion -100).  Answers should carry ``<rK>`` (see
    :func:`format_answer`), not ``<ground_box>``, whose label substitution needs box matching.
    """
    if not isinstance(tokenizer, GromaTokenizer):
        raise GromaInputError("tokenizer must be a GromaTokenizer")
    if isinstance(turns, (str, bytes)) or not isinstance(turns, Sequence) or not turns:
        raise GromaInputError("turns must be a non-empty sequence of (user, assistant) pairs")
    wrapped = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, tuple) or len(turn) != 2 or not all(isinstance(x, str) and x for x in turn):
            raise GromaInputError(f"turn {i} must be a (user, assistant) pair of non-empty str")
        user, answer = turn
        if "<sep>" in user or "<sep>" in answer:
            raise GromaInputError(f"turn {i} contains '<sep>', which marks supervised spans")
        wrapped.append((user, f"<sep>{answer}<sep>"))
    ids = tokenizer.encode(build_prompt(wrapped, template=template), add_bos=True, add_eos=False)
    sep, eos = tokenizer.sep_token_id, tokenizer.eos_token_id
    labels = []
    inside = False
    for t in ids:
        if t == sep:
            inside = not inside
            labels.append(IGNORE_INDEX)
        else:
            labels.append(t if inside else IGNORE_INDEX)
    for pos in [p for p, t in enumerate(ids) if t == eos][1:]:
        labels[pos] = eos
    keep = [p for p, t in enumerate(ids) if t != sep]
    return [ids[p] for p in keep], [labels[p] for p in keep]


# ---------------------------------------------------------------------- answer parsing (spec §2.5)


@dataclass(frozen=True)
class ParsedPhrase:
    """A grounded phrase: ``answer.text[start:end] == text``; ``regions`` are the valid K (``< num_regions``,
    no repeats, in written order), ``dropped`` the K that were out of range."""

    text: str
    start: int
    end: int
    regions: tuple[int, ...]
    dropped: tuple[int, ...] = ()


@dataclass(frozen=True)
class ParsedAnswer:
    """A decoded Groma answer: ``text`` without markup, ``phrases`` (every ``<roi>`` block, in order; a
    phrase whose K were all out of range has empty ``regions``), and the raw input."""

    text: str
    phrases: tuple[ParsedPhrase, ...]
    raw: str

    @property
    def regions(self) -> tuple[int, ...]:
        """All valid region indices named by the answer, first mention first, no repeats."""
        return tuple(dict.fromkeys(k for p in self.phrases for k in p.regions))

    @property
    def dropped_regions(self) -> tuple[int, ...]:
        """All out-of-range K the answer wrote (``run_groma.py`` ignores them too)."""
        return tuple(dict.fromkeys(k for p in self.phrases for k in p.dropped))


_NO_SPACE_BEFORE = frozenset(".,;:!?)]}%")
_NO_SPACE_AFTER = frozenset("([{")


class _Builder:
    """Concatenates answer fragments, normalising whitespace where markup was removed."""

    def __init__(self) -> None:
        self.text = ""

    def add(self, fragment: str) -> tuple[int, int]:
        """Append ``fragment`` (whitespace collapsed, ends stripped); return its span."""
        frag = _WS_RE.sub(" ", fragment).strip()
        if not frag:
            return self.mark()
        self.text = self.text.rstrip()
        if self.text and frag[0] not in _NO_SPACE_BEFORE and self.text[-1] not in _NO_SPACE_AFTER:
            self.text += " "
        start = len(self.text)
        self.text += frag
        return start, len(self.text)

    def mark(self) -> tuple[int, int]:
        """A zero-width span at the end of the text so far."""
        self.text = self.text.rstrip()
        return len(self.text), len(self.text)


def parse_answer(raw_text: str, num_regions: int, default_phrase: str | None = None) -> ParsedAnswer:
    """Parse a decoded answer (``decode(generated_ids, skip_special_tokens=False)``).

    Markup (spec §2.5): ``<p> phrase </p> <roi> <rK> ... </roi>`` is a grounded phrase, a ``<roi>`` block
    without a phrase in front a bare answer (REC); whitespace around every token is optional, since 4.32's
    decode puts spaces around added tokens.  K >= ``num_regions`` are dropped (``ParsedPhrase.dropped``).

    The clean ``text``: everything from the first ``</s>`` on is cut (pass the generated part only, not
    the prompt); all markup is removed (also stray ``<rK>``, ``<s>``, ``[PAD]``, ``<unk>``, ``<image>``,
    ...); whitespace runs become one space; where markup was removed the pieces are joined with one
    space, except before ``.,;:!?)]}%`` and after ``([{`` (so ``"... man </p> <roi> <r1> </roi> ."``
    ends in ``"man."``); the result is stripped.  Malformed markup is tolerated: ``<p>`` without ``</p>``
    or ``</p>`` not followed by ``<roi>`` leaves the phrase as ordinary text; a ``<roi>`` block ends at
    ``</roi>``, at the first non-space text inside it, or at the end (truncated generation); a
    ``<roi>`` block with no ``<rK>`` names nothing.

    Spans of bare ``<roi>`` blocks (no phrase text): if the answer has no other text (a REC answer such
    as ``"<roi> <r12> </roi> </s>"``) and ``default_phrase`` is given (the query expression), ``text``
    becomes ``default_phrase`` and one phrase covering all of it carries the regions of all bare blocks
    (merged, first mention first).  Otherwise each bare block is a phrase with ``text == ""`` and a
    zero-width span ``[p, p)`` at the place it stood in the clean text.
    """
    if not isinstance(raw_text, str):
        raise GromaInputError(f"raw_text must be a str, got {type(raw_text).__name__}")
    if isinstance(num_regions, bool) or not isinstance(num_regions, int) or num_regions < 0:
        raise GromaInputError(f"num_regions must be an int >= 0, got {num_regions!r}")
    if default_phrase is not None and not isinstance(default_phrase, str):
        raise GromaInputError(f"default_phrase must be a str or None, got {type(default_phrase).__name__}")

    body = raw_text.split("</s>", 1)[0]
    # Tokens: ("text", s) or ("tag", s); tags are the markup strings.
    parts = _MARKUP_RE.split(body)
    tags = _MARKUP_RE.findall(body)
    seq: list[tuple[str, str]] = []
    for i, part in enumerate(parts):
        if part:
            seq.append(("text", part))
        if i < len(tags):
            seq.append(("tag", tags[i]))

    # Pass 1: items = ("text", s) | ("phrase", s, ks) | ("bare", ks); "phrase"/"bare" need >= 1 <rK>.
    items: list[tuple] = []
    i, n = 0, len(seq)

    def read_roi(j: int) -> tuple[list[int], int]:
        """Read <rK> tokens after a <roi> at seq[j-1]; return (ks, index after the block)."""
        ks: list[int] = []
        while j < n:
            kind, s = seq[j]
            if kind == "text":
                if s.strip():
                    return ks, j  # text inside <roi>: the block ends here
            elif s == "</roi>":
                return ks, j + 1
            elif (m := _REGION_TOKEN_RE.fullmatch(s)) is not None:
                ks.append(int(m.group(1)))
            else:
                return ks, j  # another tag: the block ends here
            j += 1
        return ks, j

    while i < n:
        kind, s = seq[i]
        if kind == "text":
            items.append(("text", s))
            i += 1
        elif s == "<p>":
            # Collect phrase text up to </p>.
            j, phrase = i + 1, []
            while j < n and seq[j][0] == "text":
                phrase.append(seq[j][1])
                j += 1
            if j < n and seq[j][1] == "</p>":
                k = j + 1
                while k < n and seq[k][0] == "text" and not seq[k][1].strip():
                    k += 1
                if k < n and seq[k][1] == "<roi>":
                    ks, after = read_roi(k + 1)
                    items.append(("phrase", "".join(phrase), ks) if ks else ("text", "".join(phrase)))
                    i = after
                    continue
                items.append(("text", "".join(phrase)))
                i = j + 1
                continue
            # <p> without </p>: its text stays ordinary text (the next tag is handled by the loop).
            items.append(("text", "".join(phrase)))
            i = j
        elif s == "<roi>":
            ks, after = read_roi(i + 1)
            if ks:
                items.append(("bare", ks))
            items.append(("text", ""))  # a boundary, even for an empty block
            i = after
        else:
            items.append(("text", ""))  # any other markup: removed, acts as a boundary
            i += 1

    # Pass 2: build the clean text and the spans.
    builder = _Builder()
    raw_phrases: list[tuple[str, int, int, list[int], bool]] = []  # (text, start, end, ks, bare)
    for item in items:
        if item[0] == "text":
            builder.add(item[1])
        elif item[0] == "phrase":
            start, end = builder.add(item[1])
            raw_phrases.append((builder.text[start:end], start, end, item[2], False))
        else:
            start, end = builder.mark()
            raw_phrases.append(("", start, end, item[1], True))
    text = builder.text.strip()

    def split_ks(ks: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        valid = tuple(dict.fromkeys(k for k in ks if k < num_regions))
        dropped = tuple(dict.fromkeys(k for k in ks if k >= num_regions))
        return valid, dropped

    phrases: list[ParsedPhrase] = []
    if not text and raw_phrases and default_phrase is not None and _WS_RE.sub(" ", default_phrase).strip():
        text = _WS_RE.sub(" ", default_phrase).strip()
        valid, dropped = split_ks([k for p in raw_phrases for k in p[3]])
        phrases.append(ParsedPhrase(text, 0, len(text), valid, dropped))
    else:
        for ptext, start, end, ks, _bare in raw_phrases:
            valid, dropped = split_ks(ks)
            start, end = min(start, len(text)), min(end, len(text))
            phrases.append(ParsedPhrase(ptext, start, end, valid, dropped))
    return ParsedAnswer(text=text, phrases=tuple(phrases), raw=raw_text)
