"""Linear probes of a pretrained encoder against the same architecture at random initialisation.

    python docs/probe_encoder.py results/pretrain-demo/pretrain-128/best

Features of the frozen encoder (RoBERTa or BERT) on `--dataset imdb --max-samples 2000` from
the embedded copy, offline (the reviews that docs/pretrain_demo.sh finetunes and scores on,
truncated to 128 tokens): the last hidden state of the first token (`<s>`), the mean of the last
hidden states and the mean of the input word embeddings. Each feeds a standardised logistic
regression whose C is picked on validation accuracy; validation and test accuracy are printed,
and, for scale, those of train.py's TF-IDF pipeline (C picked on validation) on the same 128
tokens of each review.
Used in docs/pretraining_experiments.md to ask whether masked-LM pretraining put sentiment into
the encoder at all, apart from how finetuning uses it.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlx_models  # noqa: E402, F401, I001  (OpenBLAS before MLX, or its CPU GEMMs are far slower)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from mlx_models.train import tfidf as baseline, scratch  # noqa: E402
from mlx_models.interop import loading
from mlx_models.batching import collate, encode, pad_id_for  # noqa: E402
from mlx_models.cli import ArgumentParser, run_cli  # noqa: E402
from mlx_models.train.config import TrainConfig  # noqa: E402
from mlx_models.train.data import load_splits  # noqa: E402

SPLITS = ("train", "validation", "test")


def features(encoder, tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    out = {"<s>": [], "mean": [], "embeddings": []}
    seqs, pad_id = encode(tokenizer, texts, 128), pad_id_for(tokenizer)  # as train.py tokenizes
    for i in range(0, len(seqs), 64):
        ids, mask = (mx.array(a) for a in collate(seqs[i : i + 64], pad_id))
        h, _ = encoder(ids, mask)
        m = mask[..., None].astype(mx.float32)
        out["<s>"].append(np.array(h[:, 0]))
        out["mean"].append(np.array((h * m).sum(1) / m.sum(1)))
        out["embeddings"].append(np.array((encoder.embeddings.word_embeddings(ids) * m).sum(1) / m.sum(1)))
    return {k: np.concatenate(v) for k, v in out.items()}


def pick(make, cs: tuple[float, ...], x: dict, y: dict[str, np.ndarray]) -> tuple[float, float]:
    """(validation, test) accuracy of the classifier ``make(C)`` with the best validation accuracy."""
    best = (-1.0, 0.0)
    for c in cs:
        clf = make(c).fit(x["train"], y["train"])
        val = clf.score(x["validation"], y["validation"])
        if val > best[0]:  # the first C on a tie: test accuracy never decides
            best = (val, clf.score(x["test"], y["test"]))
    return best


def probe(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> tuple[float, float]:
    """A standardised logistic regression on frozen features."""
    return pick(
        lambda c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)),
        (0.001, 0.01, 0.1, 1.0),
        x,
        y,
    )


def tfidf_reference(tokenizer, splits, y: dict[str, np.ndarray]) -> tuple[float, float]:
    """train.py's TF-IDF pipeline (word uni- and bigrams), C picked on validation, on the same
    reviews cut to 128 tokens (of this checkpoint's tokenizer)."""
    x = {
        s: tokenizer.batch_decode(encode(tokenizer, getattr(splits, s).texts, 128), skip_special_tokens=True)
        for s in SPLITS
    }
    return pick(
        lambda c: baseline.pipeline(baseline.DEFAULT_PARAMS | {"C": c}, 0), (0.3, 1.0, 3.0, 10.0, 30.0), x, y
    )


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="docs/probe_encoder.py", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a pretrained encoder's checkpoint directory, e.g. RUN/best")
    checkpoint = parser.parse_args(argv).checkpoint
    config, tokenizer = loading.read_config(checkpoint), loading.load_tokenizer(checkpoint)
    splits = load_splits(TrainConfig(dataset="imdb", max_samples=2000, seed=0))
    y = {s: np.array(getattr(splits, s).labels) for s in SPLITS}
    for name, model in (
        ("pretrained", loading.load_model(checkpoint, "mlm")),
        ("random init", scratch.build(config, "mlm", 0)),
    ):
        model.eval()
        feats = {
            s: features(model[model.base_model_prefix], tokenizer, getattr(splits, s).texts) for s in SPLITS
        }
        for kind in ("<s>", "mean", "embeddings"):
            val, test = probe({s: feats[s][kind] for s in SPLITS}, y)
            print(f"{name:12s} {kind:10s} validation {val:.3f}  test {test:.3f}", flush=True)
    val, test = tfidf_reference(tokenizer, splits, y)
    print(f"{'tf-idf':12s} {'128 tokens':10s} validation {val:.3f}  test {test:.3f}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded copy, as docs/pretrain_demo.sh reads
    sys.exit(run_cli(main))
