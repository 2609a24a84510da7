"""Plain-text corpora for language-model training (mlm, lm): .txt and .jsonl files, packing.

A ``--data-dir`` for pretraining holds either split files as for classification (train.jsonl,
validation.csv, ...; the text column is what is trained on, the labels only make the held-out
splits those of a classifier on the same files) or any ``.txt`` files (one document per line,
or one per file with ``--whole-files``) and ``.jsonl`` files with a ``text`` field; validation
and test are then held out of them, deterministically. A ``--data-dir`` that does not exist is
filled with a small real corpus (the embedded IMDB reviews), as Lit-GPT's recipe creates its own.

Packing, as RoBERTa pretrains: every document is tokenized with its special tokens
(``<s> doc </s>``), the documents are concatenated and cut into blocks of ``max_length`` tokens;
the last, shorter block is kept, so no token is lost.
"""

import itertools
import sys
from pathlib import Path

from ..batching import encode
from ..errors import DataError
from ..io import atomic_dir, read_utf8
from .config import TrainConfig
from .data import SPLIT_FILES, Split, Splits, hold_out, load_splits

DEFAULT_CORPUS_DOCS = 5000  # IMDB reviews written into a missing --data-dir: ~1.2 M words


def load_corpus(cfg: TrainConfig) -> Splits:
    """Train/validation/test texts (no labels) for task mlm or lm."""
    if cfg.data_dir is None:
        return load_splits(cfg)  # a registered dataset: its text column
    directory = Path(cfg.data_dir)
    if not directory.exists():
        write_default_corpus(directory)
    names = {p.stem for p in directory.iterdir() if p.is_file()}
    if names & {stem for stems in SPLIT_FILES.values() for stem in stems}:
        return load_splits(cfg)
    texts = read_text_dir(directory, cfg.whole_files)
    splits = hold_out({"train": Split(texts, None)}, None, f"corpus {directory}")
    return Splits(**splits, num_labels=0, label_names=None, source=f"corpus {directory}")


def read_text_dir(directory: Path, whole_files: bool) -> list[str]:
    """Every document of the .txt and .jsonl files below ``directory``, in path order."""
    files = sorted(p for p in directory.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
    if not files:
        raise DataError(f"no .txt or .jsonl files in {directory}; add a corpus (one document per line)")
    texts = []
    for path in files:
        if path.suffix == ".jsonl":
            from .data import read_file

            ds = read_file(path, "text", None)
            if "text" not in ds.column_names:
                raise DataError(
                    f"{path} has no 'text' field; write one JSON object per line: {{\"text\": ...}}"
                )
            texts += [t for t in ds["text"] if isinstance(t, str) and t.strip()]
            continue
        content = read_utf8(path, DataError)
        docs = [content] if whole_files else content.splitlines()
        texts += [d for d in docs if d.strip()]
    if not texts:
        raise DataError(f"the corpus in {directory} is empty; add text to its .txt or .jsonl files")
    return texts


def write_default_corpus(directory: Path) -> None:
    """Fill a missing --data-dir with real text: embedded IMDB reviews, one per line, a stratified
    pick (as many positive as negative: the copy is sorted by label) from the training split of
    `--dataset imdb` only (its held-out validation and test reviews never appear in a corpus)."""
    cfg = TrainConfig(dataset="imdb", task="classify", max_samples=DEFAULT_CORPUS_DOCS, out=str(directory))
    texts = load_splits(cfg).train.texts
    with atomic_dir(directory) as tmp:
        (tmp / "imdb.txt").write_text("".join(" ".join(t.split()) + "\n" for t in texts), encoding="utf-8")
    print(
        f"notice: {directory} did not exist: wrote {len(texts)} IMDB reviews there as the corpus",
        file=sys.stderr,
    )


def pack(encoded: list[list[int]], block: int) -> list[list[int]]:
    """Concatenate the token ids of all documents and cut them into blocks of ``block`` tokens (the
    last block may be shorter)."""
    stream = list(itertools.chain.from_iterable(encoded))
    return [stream[i : i + block] for i in range(0, len(stream), block)]


def blocks(tokenizer, texts: list[str], max_length: int, line_by_line: bool, where: str) -> list[list[int]]:
    """The model's examples from ``texts``: packed blocks, or one truncated example per text."""
    if line_by_line:
        return encode(tokenizer, texts, max_length)
    packed = pack(encode(tokenizer, texts, None), max_length)
    if len(packed) < 2 and where == "train":
        raise DataError(
            f"the training corpus holds {sum(map(len, packed))} tokens, less than two blocks of "
            f"max_length {max_length}; add text or lower --max-length"
        )
    return packed
