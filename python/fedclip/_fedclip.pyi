"""Type stubs of the compiled module fedclip._fedclip."""

import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

PathLike = Union[str, os.PathLike[str]]

BUNDLED_MODEL: str
"""The bundled tiny CLIP model (random weights), `fedclip run`'s default `--model`."""
BUNDLED_DATA: str
"""The bundled PACS-mini, `fedclip run`'s default `--data`."""

class Model:
    """A Hugging Face CLIP model directory loaded on one engine."""

    def __init__(self, path: PathLike, device: str = "auto") -> None:
        """`device` is "auto" (the GPU when usable, else the CPU), "cpu" or "cuda"."""
    @property
    def dim(self) -> int:
        """Projected feature size (`projection_dim`)."""
    @property
    def logit_scale(self) -> Optional[float]:
        """`logit_scale` as stored (the log of CLIP's temperature), None if absent."""
    @property
    def path(self) -> str: ...
    def encode_images(
        self, paths: Sequence[PathLike], batch: int = 64
    ) -> npt.NDArray[np.float32]:
        """`[len(paths), dim]` projected image features, not L2-normalised, equal bit for
        bit to `fedclip embed --batch <batch>`'s `image_embeds`."""
    def encode_texts(
        self, prompts: Sequence[str], batch: int = 64, truncate: bool = False
    ) -> npt.NDArray[np.float32]:
        """`[len(prompts), dim]` projected text features; prompts longer than the context
        are an error unless `truncate`."""

class Stats:
    """What one cache lookup did."""

    hits: int
    computed: int
    hashed: int

class FeatureStore:
    """The feature cache of `fedclip run --cache-dir`: the same files, the same keys."""

    def __init__(self, cache_dir: PathLike, model: Model) -> None: ...
    @property
    def dir(self) -> str: ...
    def image_features(
        self, paths: Sequence[PathLike], batch: int = 64
    ) -> Tuple[npt.NDArray[np.float32], Stats]:
        """Features of `paths` in order, computed with the model only where missing."""
    def text_features(
        self, prompts: Sequence[str], batch: int = 64
    ) -> Tuple[npt.NDArray[np.float32], Stats]: ...
    def warnings(self) -> List[str]: ...

def run_json(config_json: str, resume: bool = False, device: str = "auto") -> str:
    """`fedclip run` from a RunConfig as JSON (see `fedclip.run_config`); returns
    summary.json's text."""

def domains(data: PathLike) -> List[str]:
    """The domain folders of a dataset root, in sorted order."""
