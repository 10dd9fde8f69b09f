"""`shakespeare-qa`: an instruction set whose answers come from the text of the plays.

Built deterministically from the cached `shakespeare` corpus (the 38 plays, public domain). The
cleaned text keeps the plays' layout: a title line, `ACT`/`SCENE` headings, and speeches as
paragraphs whose first line is the speaker's name. Three kinds of question are asked of single
verse lines taken from the first paragraph of a speech (so the speaker is certain):

    who      Who speaks the line "..."?              -> the speaker's name as printed (HAMLET)
    play     Which play is this line from: "..."?     -> the play's title (Hamlet)
    next     What is the line after "..."?            -> the next line of the same speech

Only lines of at least MIN_WORDS words that occur once in the whole corpus are asked about, so each
question has one answer. Every line is used once, as a question or as an answer, so the held-out
share (by hash of the example, see `trainlab.data.sft`) is evaluated on lines no training example
shows. Lines are chosen in the order of their sha256, so every machine builds the same file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from trainlab.data.corpora import default_cache_dir, get_corpus
from trainlab.errors import DataError
from trainlab.files import atomic_write

NAME = "shakespeare-qa"
DESCRIPTION = ("Questions on Shakespeare's plays answered from the text (who speaks a line, which play it is "
               "from, the line after it), built from the shakespeare corpus; public domain.")
PER_KIND = 1500
MIN_WORDS = 6
# the built file; every machine must build exactly this from the pinned corpus
SHA256 = "51f1db508e8eb295e52c89b1a2856889f7b26629d9c3ba93f71fef0454a8d599"

# The plays in corpus order. Measure for Measure's text has no title line: it starts at its ACT I.
PLAYS = (
    "A Midsummer Night's Dream", "As You Like It", "Love's Labours Lost", "Much Ado About Nothing",
    "The Comedy of Errors", "The Merry Wives of Windsor", "Twelfth Night", "Two Gentlemen of Verona",
    "Edward III", "Henry IV, Part I", "Henry IV, Part 2", "Henry V", "Henry VI, Part 1", "Henry VI, Part 2",
    "Henry VI, Part 3", "Henry VIII", "King John", "Richard II", "Richard III", "All's Well That Ends Well",
    "Measure for Measure", "The Merchant of Venice", "The Taming of the Shrew", "Troilus and Cressida",
    "Antony and Cleopatra", "Coriolanus", "Julius Caesar", "Titus Andronicus", "A Winter's Tale", "Cymbeline",
    "Pericles", "The Tempest", "Hamlet", "King Lear", "Macbeth", "Othello", "Romeo and Juliet",
    "Timon of Athens",
)
UNTITLED = {"Measure for Measure"}

# A speaker's name: up to four words, letters, apostrophes and hyphens only (no verse punctuation).
SPEAKER = re.compile(r"^[A-Z][A-Za-z'\-]*( [A-Za-z'\-]+){0,3}$")


@dataclass(frozen=True)
class Speech:
    play: str
    speaker: str
    lines: tuple[str, ...]


def split_plays(text: str) -> dict[str, list[str]]:
    """Title -> the play's paragraphs (blocks separated by a blank line)."""
    blocks = text.split("\n\n")
    starts, act_one = [], -1
    for title in PLAYS:
        if title in UNTITLED:
            at = _find(blocks, "ACT I", act_one + 1)
        else:
            at = _find(blocks, title, (starts[-1] + 1) if starts else 0)
        starts.append(at)
        act_one = _find(blocks, "ACT I", at)
    ends = starts[1:] + [len(blocks)]
    plays = {title: blocks[s:e] for title, s, e in zip(PLAYS, starts, ends)}
    for title, body in plays.items():
        if sum(b == "ACT I" for b in body) != 1:
            raise DataError(f"shakespeare corpus: the play '{title}' was not found where expected")
    return plays


def _find(blocks: list[str], value: str, start: int) -> int:
    for i in range(start, len(blocks)):
        if blocks[i].strip() == value:
            return i
    raise DataError(f"shakespeare corpus: no paragraph '{value}' after paragraph {start}; is the corpus the pinned one?")


def speeches(title: str, blocks: list[str]) -> Iterator[Speech]:
    """The first paragraph of each speech whose speaker line is certain: a name that heads at least two
    paragraphs of the play (a verse line that happens to look like a name heads only one)."""
    heads = Counter(b.split("\n", 1)[0] for b in blocks if "\n" in b)
    for block in blocks:
        name, _, rest = block.partition("\n")
        if rest and SPEAKER.match(name) and heads[name] >= 2:
            yield Speech(title, name, tuple(rest.split("\n")))


def askable(line: str) -> bool:
    return len(line.split()) >= MIN_WORDS and "[" not in line and '"' not in line


def build_examples(text: str, per_kind: int = PER_KIND) -> list[dict]:
    """The examples, in a fixed order: `per_kind` of each kind, lines chosen by their sha256."""
    all_speeches = [s for title, blocks in split_plays(text).items() for s in speeches(title, blocks)]
    counts = Counter(line.strip() for line in text.split("\n"))
    # (speech, position) of each line that may be quoted: unique in the corpus, long enough
    spots = [(s, i) for s in all_speeches for i, line in enumerate(s.lines) if askable(line) and counts[line] == 1]
    spots.sort(key=lambda spot: hashlib.sha256(spot[0].lines[spot[1]].encode()).hexdigest())
    used: set[str] = set()
    made = {"who": [], "play": [], "next": []}
    kinds = ("who", "play", "next")
    turn = 0
    for speech, i in spots:
        line = speech.lines[i]
        if line in used:
            continue
        kind = kinds[turn % 3]
        if len(made[kind]) >= per_kind:
            kind = next((k for k in kinds if len(made[k]) < per_kind), None)
            if kind is None:
                break
        example = _question(kind, speech, i, used)
        if example is None:
            continue
        made[kind].append(example)
        turn += 1
    return [e for k in kinds for e in made[k]]


def _question(kind: str, speech: Speech, i: int, used: set[str]) -> Optional[dict]:
    line = speech.lines[i]
    if kind == "who":
        prompt, response = f'Who speaks the line "{line}"?', speech.speaker
    elif kind == "play":
        prompt, response = f'Which play is this line from: "{line}"?', speech.play
    else:
        if i + 1 >= len(speech.lines) or speech.lines[i + 1] in used or "[" in speech.lines[i + 1]:
            return None
        prompt, response = f'What is the line after "{line}"?', speech.lines[i + 1]
        used.add(speech.lines[i + 1])
    used.add(line)
    return {"prompt": prompt, "response": response, "kind": kind, "play": speech.play, "speaker": speech.speaker,
            "line": line}


def dataset_path(cache_dir: Path) -> Path:
    return Path(cache_dir) / "corpora" / f"{NAME}.jsonl"


def get_dataset(cache_dir: Optional[Path] = None, quiet: bool = False) -> Path:
    """The .jsonl of shakespeare-qa in the cache, built from the shakespeare corpus if missing."""
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    corpus = get_corpus("shakespeare", cache_dir, quiet=quiet)
    path = dataset_path(cache_dir)
    if _is_valid(path):
        return path
    with open(path.parent / f".{NAME}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if not _is_valid(path):
            _build(corpus, path)
    return path


def _is_valid(path: Path) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == SHA256


def _build(corpus: Path, path: Path) -> None:
    examples = build_examples(corpus.read_text(encoding="utf-8"))
    data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples).encode("utf-8")
    sha = hashlib.sha256(data).hexdigest()
    if sha != SHA256:
        raise DataError(f"the built {NAME} has sha256 {sha}, expected {SHA256}; the corpus is the pinned one, "
                        f"so this is a trainlab bug")
    meta = {"name": NAME, "source": "shakespeare", "source_sha256": hashlib.sha256(corpus.read_bytes()).hexdigest(),
            "examples": len(examples), "kinds": dict(Counter(e["kind"] for e in examples)), "sha256": sha,
            "description": DESCRIPTION}
    atomic_write(path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode("utf-8"), fsync=True)
    atomic_write(path, data, fsync=True)
