"""Words from WordNet's database files, by lexicographer file (``noun.artifact``, ``adj.all``, ...).

Read at table-build time only (``groma add-words``), from the plain-text ``data.noun``,
``data.verb`` and ``data.adj`` files of WordNet 3.0 (Debian's ``wordnet-base`` package puts them in
``/usr/share/wordnet``; ``apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb DIR`` unpacks
them anywhere). Each data line is ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] ...``
with ``w_cnt`` in hexadecimal; adjective words may carry a syntactic marker such as ``(a)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

#: WordNet's lexicographer file numbers (lexnames(5WN)) of the files this project reads words from
LEXICOGRAPHER_FILES = {
    "adj.all": 0, "noun.artifact": 6, "noun.food": 13, "noun.shape": 25, "verb.contact": 35,
    "verb.motion": 38, "verb.possession": 40,
}
_DATA_FILES = {"adj": "data.adj", "noun": "data.noun", "verb": "data.verb"}


def lemmas(wordnet_dir: str | Path, lexicographer_files: Iterable[str]) -> list[str]:
    """Sorted single-word lemmas (``[a-z]{3,}``) of every synset in the named lexicographer files."""
    wordnet_dir = Path(wordnet_dir)
    wanted: dict[str, set[int]] = {}
    for name in lexicographer_files:
        if name not in LEXICOGRAPHER_FILES:
            raise ValueError(f"unknown lexicographer file {name!r}; known: {sorted(LEXICOGRAPHER_FILES)}")
        wanted.setdefault(name.split(".")[0], set()).add(LEXICOGRAPHER_FILES[name])
    out: set[str] = set()
    for pos, numbers in wanted.items():
        path = wordnet_dir / _DATA_FILES[pos]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (WordNet 3.0 database files, e.g. Debian's wordnet-base)")
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):  # the licence header
                continue
            fields = line.split(" ")
            if int(fields[1]) not in numbers:
                continue
            for i in range(int(fields[3], 16)):
                word = re.sub(r"\(\w+\)$", "", fields[4 + 2 * i]).lower()
                if re.fullmatch(r"[a-z]{3,}", word):
                    out.add(word)
    return sorted(out)
