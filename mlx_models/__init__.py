"""mlx_models: BERT, RoBERTa, Llama and Mistral in MLX, cross-checked against transformers."""

from ._blas import BLAS  # noqa: I001  (must run before the first `import mlx.core`)
from ._malloc import KEEPS_FREED_MEMORY
from .errors import ConfigError, DataError, MLXModelsError, SourceError, WeightsError

__all__ = [
    "BLAS",
    "KEEPS_FREED_MEMORY",
    "ConfigError",
    "DataError",
    "MLXModelsError",
    "SourceError",
    "WeightsError",
    "convert",
    "load",
    "load_model",
    "load_tokenizer",
]


def __getattr__(name: str):
    # Lazy: `import mlx_models` stays cheap (the tfidf baseline needs neither MLX nor torch).
    if name == "convert":
        from .interop.conversion import convert

        return convert
    if name in ("load", "load_model", "load_tokenizer"):
        from .interop import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'mlx_models' has no attribute {name!r}")
