"""Train a model (or the tfidf baseline): `python train.py --help`."""

import sys

from mlx_models.baseline import run_tfidf
from mlx_models.cli import run_cli
from mlx_models.config import load_train_config


def main(argv: list[str] | None = None) -> int | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg.split("=")[0] == "--study" for arg in argv):
        from mlx_models.study import main as run_study  # every model x dataset of a study

        return run_study(argv)
    cfg = load_train_config(argv)
    if cfg.model == "tfidf":
        run_tfidf(cfg)
    else:
        from mlx_models.trainer import run  # MLX is only needed past this point

        run(cfg)


if __name__ == "__main__":
    sys.exit(run_cli(main))
