"""mlx_models: BERT, RoBERTa and Llama in MLX, cross-checked against transformers."""

from ._blas import BLAS  # noqa: I001  (must run before the first `import mlx.core`)
from .errors import ConfigError, DataError, MLXModelsError, SourceError, WeightsError
from .convert import convert
from .loading import load, load_model, load_tokenizer

__all__ = [
    "BLAS",
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
