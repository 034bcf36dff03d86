"""Groma's tokenizer: a SentencePiece model plus the 114 Groma tokens, with transformers-4.32 rules.

The original (FoundationVision/Groma) tokenises with the *slow* ``LlamaTokenizer`` of transformers 4.32.0
(``use_fast=False``).  Newer transformers versions handle added tokens and the ``legacy`` flag differently,
so this module re-states the 4.32 rules on top of the ``sentencepiece`` library and is checked against ids
produced by the original (``fixtures/groma_official_tiny/cases/case_c_tokenizer.json``).

Rules reproduced (each is pinned by the fixture unless marked otherwise):

Encoding (``encode`` / ``tokenize``)
  1. ``legacy=False`` only: every ``"▁"`` in the text becomes a space and one ``"▁"`` is put in front of
     the whole text.
  2. The text is split at every no-split token, leftmost-longest: the 114 added tokens (``[PAD]``,
     ``<sep>``, ..., ``<r99>``) and bos/eos/unk (``<s>``, ``</s>``, ``<unk>``), wherever they occur.
  3. Whitespace (Python ``str.strip`` whitespace, so also newlines and tabs) is removed on both sides of
     every no-split token that is *not* an ``AddedToken`` object in the tokenizer files (the 113 plain added
     tokens and ``[PAD]``, which ``special_tokens_map.json`` stores as a bare string).  bos/eos/unk are
     ``AddedToken`` with ``lstrip``/``rstrip`` false, so spaces next to them survive; an ``AddedToken``
     with ``lstrip``/``rstrip`` true strips only that side.  (4.32 ``PreTrainedTokenizer.tokenize``.)
  4. Every remaining non-empty text chunk is encoded on its own:
       * ``legacy=True``: with the model as stored, i.e. with SentencePiece's dummy ``"▁"`` prefix, so every
         chunk (also the one after ``</s>`` or ``<p>``) starts a new word;
       * ``legacy=False``: with a copy of the model whose ``add_dummy_prefix`` is off; a chunk that starts
         with ``"▁"`` or a space is encoded as ``"<unk>" + chunk`` and the pieces of ``"<unk>"`` are dropped
         again (4.32 does this so SentencePiece cannot eat the leading space).  So ``"</s>USER:"`` gives
         ``</s> US ER :`` rather than ``</s> ▁USER :``.
  5. ``legacy=False`` only: if the result starts with a lone ``"▁"`` followed by bos/eos/unk/pad, that
     ``"▁"`` is dropped (it is kept before the other 110 added tokens: ``"<p> x"`` -> ``▁ <p> x``).
  6. bos is prepended when ``add_bos_token``; eos appended when ``add_eos_token`` (false for Groma).
  7. Pieces map to ids through the added-token table first, then the SentencePiece vocabulary; unknown
     characters fall back to UTF-8 byte pieces (a property of the model, ``byte_fallback``).

  Not pinned by the fixture: the empty string.  Rules 1-5 applied literally give ``[bos, id("▁")]`` for
  ``legacy=False`` and ``[bos]`` for ``legacy=True``; that is what ``encode("")`` returns.

Decoding (``decode``)
  1. Ids become pieces; with ``skip_special_tokens`` the ids of bos/eos/unk/pad are dropped -- *not* the
     other 113 added tokens, which 4.32 does not register as special.
  2. The pieces are cut into runs at every added token (the 114, which include ``[PAD]`` but not
     bos/eos/unk); each added token is its own part, each run of other pieces is turned into a string
     (3.), and the parts are joined with one space (4.32's ``spaces_between_special_tokens=True``
     default; ``tokenizer_config.json``'s ``spaces_between_special_tokens`` is not read by 4.32's decode).
  3. A run: a leading ``"▁"`` is cut from its first piece; bos/eos/unk pieces are written literally and
     the text pieces between them go through SentencePiece's decoder (the no-dummy-prefix model when
     ``legacy=False``, so a ``"▁"`` right after ``</s>`` is a space).  ``legacy=True`` also puts a space
     before a bos/eos/unk piece that follows text (best knowledge of 4.32; not pinned by the fixture).
  4. ``clean_up_tokenization_spaces`` (false in Groma's files) applies 4.32's English clean-up.

  Example (fixture): ``[32006, 435, 654, 32007, 32004, 32017, 32005, 2]`` ->
  ``"<p> blue mug </p> <roi> <r3> </roi> </s>"``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from .errors import CheckpointError, GromaInputError

SPIECE_UNDERLINE = "\u2581"
"""SentencePiece's word-boundary mark ``▁``."""

IGNORE_INDEX = -100
"""Label value that the loss ignores (``IGNORE_INDEX`` of the original)."""

# The 17 entries of the original's DEFAULT_TOKENS, in the order the training script adds them.
# <s>, </s> and <unk> already exist in the SentencePiece vocabulary, so only the other 14 get new ids.
DEFAULT_TOKENS: tuple[str, ...] = (
    "[PAD]",
    "<s>",
    "</s>",
    "<unk>",
    "<sep>",
    "<img>",
    "</img>",
    "<roi>",
    "</roi>",
    "<p>",
    "</p>",
    "<image>",
    "<region>",
    "<refer_box>",
    "<ground_box>",
    "<refer_feat>",
    "[grounding]",
)
NUM_REGION_INDEX_TOKENS = 100
REGION_INDEX_TOKENS: tuple[str, ...] = tuple(f"<r{k}>" for k in range(NUM_REGION_INDEX_TOKENS))
"""``<r0>`` ... ``<r99>``: proxy/index tokens of the region tokens (``REGION_IDX_TOKENS``)."""

BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, PAD_TOKEN = "<s>", "</s>", "<unk>", "[PAD]"
_SP_SPECIALS = (BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)

# The tokens the original adds (14 + 100 = 114, in id order).
GROMA_ADDED_TOKENS: tuple[str, ...] = tuple(t for t in DEFAULT_TOKENS if t not in _SP_SPECIALS) + REGION_INDEX_TOKENS
NUM_NEW_TOKENS = len(GROMA_ADDED_TOKENS)  # 114, ``num_new_token`` in config.json

# What transformers 4.32 writes for the tokenizer (mirrors the official / fixture files).
_ADDED_TOKEN_NO_STRIP: dict[str, Any] = {
    "lstrip": False,
    "normalized": False,
    "rstrip": False,
    "single_word": False,
}

# 4.32's ``clean_up_tokenization`` (only used if a tokenizer_config.json asks for it).
_CLEAN_UP_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise CheckpointError(f"tokenizer file missing: {path}") from e
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read tokenizer file {path}: {e}") from e


def _write_json(path: Path, obj: Any) -> None:
    # Same layout as transformers 4.32's save_pretrained: indent 2, sorted keys, UTF-8, final newline.
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _token_content(entry: Any, what: str) -> tuple[str, bool, bool]:
    """(content, lstrip, rstrip) of a special-token entry; a bare string strips both sides (4.32 rule)."""
    if isinstance(entry, str):
        return entry, True, True
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"], bool(entry.get("lstrip", False)), bool(entry.get("rstrip", False))
    raise CheckpointError(f"malformed {what} entry in tokenizer files: {entry!r}")


def _load_sp(model_proto: bytes, add_dummy_prefix: bool | None) -> spm.SentencePieceProcessor:
    """Load a SentencePiece model, optionally overriding ``normalizer_spec.add_dummy_prefix``."""
    sp = spm.SentencePieceProcessor()
    if add_dummy_prefix is None:
        sp.LoadFromSerializedProto(model_proto)
        return sp
    # 4.32 (legacy=False) edits the model proto before loading it; do the same.
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    proto.normalizer_spec.add_dummy_prefix = add_dummy_prefix
    sp.LoadFromSerializedProto(proto.SerializeToString())
    return sp


class GromaTokenizer:
    """Groma's tokenizer (transformers-4.32 slow ``LlamaTokenizer`` + 114 added tokens).

    Build with :meth:`from_pretrained` (a checkpoint directory) or :func:`train_tokenizer`.
    Ids are read from the files: ``[PAD]`` is the first id after the SentencePiece vocabulary
    (32000 in the official checkpoint), ``<r99>`` the last.

    Attributes (token ids): ``bos_token_id``, ``eos_token_id``, ``unk_token_id``, ``pad_token_id`` (``[PAD]``),
    ``sep_token_id`` (``<sep>``), ``img_start_token_id``/``img_end_token_id`` (``<img>``/``</img>``),
    ``roi_start_token_id``/``roi_end_token_id`` (``<roi>``/``</roi>``), ``phrase_start_token_id``/
    ``phrase_end_token_id`` (``<p>``/``</p>``), ``image_token_id`` (``<image>``), ``region_placeholder_token_id``
    (``<region>``), ``refer_box_token_id``, ``ground_box_token_id``, ``refer_feat_token_id``,
    ``grounding_token_id`` (``[grounding]``), ``region_index_token_ids`` (``<r0>``..``<r99>``, a tuple).
    ``base_vocab_size`` is the SentencePiece size, ``len(tokenizer)`` the total (base + 114).
    """

    def __init__(
        self,
        model_proto: bytes,
        added_tokens: dict[str, int],
        special_tokens_map: dict[str, Any],
        tokenizer_config: dict[str, Any],
        legacy: bool | None = None,
    ) -> None:
        """Use :meth:`from_pretrained`; this takes the four files' contents.

        ``legacy`` overrides ``tokenizer_config["legacy"]`` (``None``: read it; absent in the file means
        true, as in 4.32).
        """
        self._model_proto = bytes(model_proto)
        self._added_tokens_file = dict(added_tokens)
        self._special_tokens_map = dict(special_tokens_map)
        self._tokenizer_config = dict(tokenizer_config)

        if legacy is None:
            legacy = tokenizer_config.get("legacy")
        # 4.32 treats a missing/None legacy flag as True (with a warning).
        self.legacy: bool = True if legacy is None else bool(legacy)
        self.add_bos_token: bool = bool(tokenizer_config.get("add_bos_token", True))
        self.add_eos_token: bool = bool(tokenizer_config.get("add_eos_token", False))
        self.clean_up_tokenization_spaces: bool = bool(tokenizer_config.get("clean_up_tokenization_spaces", False))

        try:
            self._sp_stored = _load_sp(self._model_proto, None)
        except Exception as e:  # sentencepiece raises RuntimeError / OSError on bad protos
            raise CheckpointError(f"cannot load tokenizer.model: {e}") from e
        # legacy=False encodes and decodes with the dummy prefix switched off (4.32 get_spm_processor).
        self._sp = self._sp_stored if self.legacy else _load_sp(self._model_proto, False)
        self.base_vocab_size: int = self._sp.get_piece_size()

        # Added tokens: ids must continue the SentencePiece vocabulary without gaps (4.32 refuses otherwise).
        self._added_encoder: dict[str, int] = {}
        for i, (tok, idx) in enumerate(sorted(added_tokens.items(), key=lambda kv: kv[1])):
            if not isinstance(tok, str) or not isinstance(idx, int) or idx != self.base_vocab_size + i:
                raise CheckpointError(
                    f"added_tokens.json: {tok!r} has id {idx!r}, expected {self.base_vocab_size + i} "
                    f"(added ids must follow the {self.base_vocab_size} SentencePiece pieces without gaps)"
                )
            self._added_encoder[tok] = idx
        self._added_decoder: dict[int, str] = {v: k for k, v in self._added_encoder.items()}

        # Special tokens and their strip flags.  bos/eos/unk entries come from special_tokens_map.json,
        # falling back to tokenizer_config.json, then to the Llama defaults.
        self._strip: dict[str, tuple[bool, bool]] = {}
        specials: dict[str, str] = {}
        for key, default in (("bos_token", BOS_TOKEN), ("eos_token", EOS_TOKEN), ("unk_token", UNK_TOKEN), ("pad_token", None)):
            entry = special_tokens_map.get(key, tokenizer_config.get(key))
            if entry is None:
                if default is None:
                    continue
                entry = dict(_ADDED_TOKEN_NO_STRIP, content=default)
            content, lstrip, rstrip = _token_content(entry, key)
            specials[key] = content
            self._strip[content] = (lstrip, rstrip)
        self.bos_token: str = specials["bos_token"]
        self.eos_token: str = specials["eos_token"]
        self.unk_token: str = specials["unk_token"]
        self.pad_token: str | None = specials.get("pad_token")
        # Plain added tokens are not AddedToken objects in 4.32: both neighbours get stripped.
        for tok in self._added_encoder:
            self._strip.setdefault(tok, (True, True))
        self.all_special_tokens: tuple[str, ...] = tuple(specials[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if k in specials)

        for tok in GROMA_ADDED_TOKENS:
            if tok not in self._added_encoder:
                raise CheckpointError(f"tokenizer lacks the Groma token {tok!r}; is this a Groma tokenizer?")
        for tok in self.all_special_tokens:
            if self._lookup(tok) is None:
                raise CheckpointError(f"special token {tok!r} has no id")

        self.all_special_ids: frozenset[int] = frozenset(self.id_of(t) for t in self.all_special_tokens)
        self.bos_token_id: int = self.id_of(self.bos_token)
        self.eos_token_id: int = self.id_of(self.eos_token)
        self.unk_token_id: int = self.id_of(self.unk_token)
        self.pad_token_id: int = self.id_of(PAD_TOKEN)
        self.sep_token_id: int = self.id_of("<sep>")
        self.img_start_token_id: int = self.id_of("<img>")
        self.img_end_token_id: int = self.id_of("</img>")
        self.roi_start_token_id: int = self.id_of("<roi>")
        self.roi_end_token_id: int = self.id_of("</roi>")
        self.phrase_start_token_id: int = self.id_of("<p>")
        self.phrase_end_token_id: int = self.id_of("</p>")
        self.image_token_id: int = self.id_of("<image>")
        self.region_placeholder_token_id: int = self.id_of("<region>")
        self.refer_box_token_id: int = self.id_of("<refer_box>")
        self.ground_box_token_id: int = self.id_of("<ground_box>")
        self.refer_feat_token_id: int = self.id_of("<refer_feat>")
        self.grounding_token_id: int = self.id_of("[grounding]")
        self.region_index_token_ids: tuple[int, ...] = tuple(self.id_of(t) for t in REGION_INDEX_TOKENS)
        self._region_index_of: dict[int, int] = {tid: k for k, tid in enumerate(self.region_index_token_ids)}

        # Leftmost-longest split: the regex tries longer alternatives first at each position.
        no_split = sorted(set(self._added_encoder) | set(self.all_special_tokens), key=lambda t: (-len(t), t))
        self._split_re = re.compile("(" + "|".join(re.escape(t) for t in no_split) + ")")
        # Number of pieces "<unk>" encodes to without dummy prefix (4.32 ``unk_token_length``).
        self._unk_len = len(self._sp.encode(self.unk_token, out_type=str))

    # ------------------------------------------------------------------ loading / saving

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], legacy: bool | None = None) -> GromaTokenizer:
        """Load ``tokenizer.model``, ``tokenizer_config.json``, ``added_tokens.json``, ``special_tokens_map.json``.

        ``legacy`` forces the legacy mode (``None``: use the file's value).  Raises
        :class:`~groma_core.errors.CheckpointError` if a file is missing or inconsistent.
        """
        d = Path(directory)
        model_path = d / "tokenizer.model"
        try:
            model_proto = model_path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"tokenizer file missing or unreadable: {model_path}") from e
        config = _read_json(d / "tokenizer_config.json")
        added = _read_json(d / "added_tokens.json")
        special = _read_json(d / "special_tokens_map.json")
        for name, obj in (("tokenizer_config.json", config), ("added_tokens.json", added), ("special_tokens_map.json", special)):
            if not isinstance(obj, dict):
                raise CheckpointError(f"{d / name}: expected a JSON object")
        return cls(model_proto, added, special, config, legacy=legacy)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write the four tokenizer files to ``directory`` (created if needed), as loaded.

        The ``legacy`` value written is the one in use (so a forced override is persisted).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "tokenizer.model").write_bytes(self._model_proto)
        config = dict(self._tokenizer_config)
        config["legacy"] = self.legacy
        _write_json(d / "tokenizer_config.json", config)
        _write_json(d / "added_tokens.json", self._added_tokens_file)
        _write_json(d / "special_tokens_map.json", self._special_tokens_map)

    # ------------------------------------------------------------------ vocabulary

    def __len__(self) -> int:
        """Total vocabulary: SentencePiece pieces + added tokens (32114 for the official model)."""
        return self.base_vocab_size + len(self._added_encoder)

    @property
    def added_tokens(self) -> dict[str, int]:
        """The added tokens (``added_tokens.json``): token -> id."""
        return dict(self._added_encoder)

    def _lookup(self, token: str) -> int | None:
        if token in self._added_encoder:
            return self._added_encoder[token]
        idx = self._sp.piece_to_id(token)
        # piece_to_id answers unk_id for anything unknown; only the unk piece itself may map there.
        if idx == self._sp.unk_id() and token != self._sp.id_to_piece(idx):
            return None
        return idx

    def token_to_id(self, token: str) -> int:
        """Id of a token or SentencePiece piece; :class:`GromaInputError` if it is not in the vocabulary."""
        if not isinstance(token, str):
            raise GromaInputError(f"token must be a str, got {type(token).__name__}")
        idx = self._lookup(token)
        if idx is None:
            raise GromaInputError(f"unknown token {token!r}")
        return idx

    id_of = token_to_id

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Like 4.32: unknown pieces map to ``unk_token_id``; a str gives an int, a sequence a list."""
        if isinstance(tokens, str):
            idx = self._lookup(tokens)
            return self.unk_token_id if idx is None else idx
        out = []
        for t in tokens:
            if not isinstance(t, str):
                raise GromaInputError(f"tokens must be str, got {type(t).__name__}")
            idx = self._lookup(t)
            out.append(self.unk_token_id if idx is None else idx)
        return out

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> str | list[str]:
        """Piece/token strings of ids (an int gives a str).  Skipping drops bos/eos/unk/pad only."""
        if _is_int(ids):
            return self._id_to_token(int(ids))  # type: ignore[arg-type]
        ids = self._check_ids(ids)
        return [self._id_to_token(i) for i in ids if not (skip_special_tokens and i in self.all_special_ids)]

    def _id_to_token(self, idx: int) -> str:
        if not 0 <= idx < len(self):
            raise GromaInputError(f"token id {idx} out of range [0, {len(self)})")
        if idx >= self.base_vocab_size:
            return self._added_decoder[idx]
        return self._sp.id_to_piece(idx)

    def _check_ids(self, ids: Any) -> list[int]:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise GromaInputError(f"ids must be a sequence of ints, got {type(ids).__name__}")
        if hasattr(ids, "tolist"):  # torch / numpy
            ids = ids.tolist()
        out = []
        for i in ids:
            if not _is_int(i):
                raise GromaInputError(f"ids must be ints, got {type(i).__name__}")
            i = int(i)
            if not 0 <= i < len(self):
                raise GromaInputError(f"token id {i} out of range [0, {len(self)})")
            out.append(i)
        return out

    def region_token_id(self, k: int) -> int:
        """Id of ``<rK>`` (``k`` in 0..99)."""
        if not _is_int(k) or not 0 <= int(k) < NUM_REGION_INDEX_TOKENS:
            raise GromaInputError(f"region index must be an int in [0, {NUM_REGION_INDEX_TOKENS}), got {k!r}")
        return self.region_index_token_ids[int(k)]

    def region_index(self, token_id: int) -> int | None:
        """K if ``token_id`` is ``<rK>``, else ``None``."""
        if not _is_int(token_id):
            raise GromaInputError(f"token id must be an int, got {type(token_id).__name__}")
        return self._region_index_of.get(int(token_id))

    # ------------------------------------------------------------------ encoding

    def tokenize(self, text: str) -> list[str]:
        """Pieces of ``text`` (no bos/eos), by the 4.32 rules in the module docstring."""
        if not isinstance(text, str):
            raise GromaInputError(f"text must be a str, got {type(text).__name__}")
        if not self.legacy:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        parts = self._split_re.split(text)  # odd indices are no-split tokens
        # Strip neighbours of tokens that strip (rule 3); the token's own flags decide each side.
        for i in range(1, len(parts), 2):
            lstrip, rstrip = self._strip.get(parts[i], (False, False))
            if lstrip and parts[i - 1]:
                parts[i - 1] = parts[i - 1].rstrip()
            if rstrip and i + 1 < len(parts) and parts[i + 1]:
                parts[i + 1] = parts[i + 1].lstrip()
        pieces: list[str] = []
        for i, part in enumerate(parts):
            if not part:
                continue
            if i % 2:
                pieces.append(part)
            else:
                pieces.extend(self._encode_chunk(part))
        if not self.legacy and len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and pieces[1] in self.all_special_tokens:
            pieces = pieces[1:]
        return pieces

    def _encode_chunk(self, chunk: str) -> list[str]:
        if self.legacy or not chunk.startswith((SPIECE_UNDERLINE, " ")):
            return self._sp.encode(chunk, out_type=str)
        # legacy=False and the chunk starts a word: shield the leading space with "<unk>" (4.32 rule 4).
        pieces = self._sp.encode(self.unk_token + chunk, out_type=str)
        return pieces[self._unk_len :] if len(pieces) >= self._unk_len else pieces

    def encode(self, text: str, add_bos: bool | None = True, add_eos: bool | None = None) -> list[int]:
        """Ids of ``text`` like ``tokenizer(text).input_ids`` in 4.32 (bos prepended, no eos for Groma).

        ``add_bos``/``add_eos``: ``None`` means the file's ``add_bos_token``/``add_eos_token``.
        Raises :class:`GromaInputError` if ``text`` is not a str.
        """
        pieces = self.tokenize(text)
        ids = self.convert_tokens_to_ids(pieces)
        assert isinstance(ids, list)
        if self.add_bos_token if add_bos is None else add_bos:
            ids = [self.bos_token_id] + ids
        if self.add_eos_token if add_eos is None else add_eos:
            ids = ids + [self.eos_token_id]
        return ids

    # ------------------------------------------------------------------ decoding

    def decode(
        self,
        ids: Sequence[int],
        skip_special_tokens: bool = False,
        spaces_between_special_tokens: bool = True,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Text of ``ids`` like 4.32 ``decode``: spaces around the 114 added tokens, see module docstring.

        ``skip_special_tokens`` removes bos/eos/unk/pad only.  Accepts lists, tuples, 1-D tensors/arrays.
        """
        tokens = self.convert_ids_to_tokens(self._check_ids(ids), skip_special_tokens=skip_special_tokens)
        assert isinstance(tokens, list)
        parts: list[str] = []
        run: list[str] = []
        for tok in tokens:
            if tok in self._added_encoder:
                if run:
                    parts.append(self._pieces_to_string(run))
                    run = []
                parts.append(tok)
            else:
                run.append(tok)
        if run:
            parts.append(self._pieces_to_string(run))
        text = (" " if spaces_between_special_tokens else "").join(parts)
        if self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces:
            for old, new in _CLEAN_UP_REPLACEMENTS:
                text = text.replace(old, new)
        return text

    def _pieces_to_string(self, pieces: list[str]) -> str:
        pieces = list(pieces)
        if pieces[0].startswith(SPIECE_UNDERLINE):
            pieces[0] = pieces[0][1:]  # the "▁" that tokenize() put in front of the text
        out: list[str] = []
        pending: list[str] = []
        prev_special = False
        for i, piece in enumerate(pieces):
            if piece in self.all_special_tokens:
                if self.legacy and not prev_special and i != 0:
                    out.append(" ")
                out.append(self._sp.decode_pieces(pending) + piece)
                pending = []
                prev_special = True
            else:
                pending.append(piece)
                prev_special = False
        out.append(self._sp.decode_pieces(pending))
        return "".join(out)

    def __repr__(self) -> str:
        return f"GromaTokenizer(base_vocab_size={self.base_vocab_size}, total={len(self)}, legacy={self.legacy})"


def _is_int(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return True
    # numpy / torch integer scalars
    return hasattr(x, "dtype") and getattr(x, "ndim", 1) == 0 and "int" in str(x.dtype)


# ---------------------------------------------------------------------- training


def _checked_sentences(sentences: Iterable[str]) -> Iterator[str]:
    for s in sentences:
        if not isinstance(s, str):
            raise GromaInputError(f"sentences must be str, got {type(s).__name__}")
        if s.strip():
            yield s


def groma_tokenizer_files(base_vocab_size: int) -> tuple[dict[str, int], dict[str, Any], dict[str, Any]]:
    """(added_tokens, special_tokens_map, tokenizer_config) as 4.32 writes them for a Groma tokenizer.

    The layout follows the official files: 114 added tokens from ``base_vocab_size`` on, in the
    original order; bos/eos/unk as non-normalised AddedTokens; ``[PAD]`` as a bare string; legacy false.
    """
    added = {tok: base_vocab_size + i for i, tok in enumerate(GROMA_ADDED_TOKENS)}
    special = {
        "bos_token": dict(_ADDED_TOKEN_NO_STRIP, content=BOS_TOKEN),
        "eos_token": dict(_ADDED_TOKEN_NO_STRIP, content=EOS_TOKEN),
        "pad_token": PAD_TOKEN,
        "unk_token": dict(_ADDED_TOKEN_NO_STRIP, content=UNK_TOKEN),
    }
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": dict(_ADDED_TOKEN_NO_STRIP, __type="AddedToken", content=BOS_TOKEN),
        "clean_up_tokenization_spaces": False,
        "eos_token": dict(_ADDED_TOKEN_NO_STRIP, __type="AddedToken", content=EOS_TOKEN),
        "legacy": False,
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": dict(_ADDED_TOKEN_NO_STRIP, __type="AddedToken", content=UNK_TOKEN),
        "use_default_system_prompt": True,
    }
    return added, special, config


def train_tokenizer(
    sentences: Iterable[str],
    out_dir: str | os.PathLike[str],
    vocab_size: int,
    *,
    num_threads: int = 1,
) -> GromaTokenizer:
    """Train a Llama-style SentencePiece BPE model, add the 114 Groma tokens, save and load it.

    Options as Llama's tokenizer: BPE, byte fallback, digits split, identity normalisation, dummy prefix
    on, extra whitespace kept, whitespace-only pieces allowed, unk/bos/eos = 0/1/2, no pad piece,
    character coverage 1.0.  ``vocab_size`` counts SentencePiece pieces (at least 3 + 256 byte pieces
    + the corpus' characters); the Groma tokens then take ids ``vocab_size`` .. ``vocab_size + 113``.
    Sentences are lines of training text (empty ones are skipped; newlines inside one are not allowed).
    Writes the four tokenizer files to ``out_dir`` (legacy false) and returns the loaded tokenizer.
    """
    if not _is_int(vocab_size) or int(vocab_size) < 260:
        raise GromaInputError(f"vocab_size must be an int >= 260 (3 specials + 256 bytes + 1), got {vocab_size!r}")
    if isinstance(sentences, (str, bytes)):
        raise GromaInputError("sentences must be an iterable of str, not a single string")
    lines = []
    for s in _checked_sentences(sentences):
        if "\n" in s or "\r" in s:
            raise GromaInputError("a training sentence may not contain a newline")
        lines.append(s)
    if not lines:
        raise GromaInputError("no non-empty training sentences")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".spm_train"
    tmp.mkdir(exist_ok=True)
    try:
        corpus = tmp / "corpus.txt"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus),
                model_prefix=str(tmp / "spm"),
                model_type="bpe",
                vocab_size=int(vocab_size),
                byte_fallback=True,
                split_digits=True,
                normalization_rule_name="identity",
                add_dummy_prefix=True,
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                character_coverage=1.0,
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=-1,
                num_threads=int(num_threads),
                minloglevel=2,
            )
        except RuntimeError as e:
            raise GromaInputError(f"SentencePiece training failed (vocab_size {vocab_size} too large for the corpus?): {e}") from e
        model_proto = (tmp / "spm.model").read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sp = _load_sp(model_proto, None)
    added, special, config = groma_tokenizer_files(sp.get_piece_size())
    tok = GromaTokenizer(model_proto, added, special, config)
    tok.save_pretrained(out)
    return tok
