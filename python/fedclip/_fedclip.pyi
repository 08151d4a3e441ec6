"""Type stubs of the compiled module fedclip._fedclip."""

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

PathLike = Union[str, os.PathLike[str]]

BUNDLED_MODEL: str
"""The bundled tiny CLIP model (random weights), `fedclip run`'s default `--model`."""
BUNDLED_DATA: str
"""The bundled PACS-mini, `fedclip run`'s default `--data`."""

class Model:
    """A CLIP model (Hugging Face or open_clip layout) loaded on one engine."""

    def __init__(self, path: PathLike, device: str = "auto", tokenizer: str = "openai") -> None:
        """`device` is "auto" (the GPU when usable, else the CPU), "cpu" or "cuda";
        `tokenizer` is "openai" (OpenAI's `clip.tokenize` cleaning, the default) or "hf"
        (`CLIPTokenizerFast`), as `--tokenizer`."""
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

def run_json(config_json: str, resume: bool = False, device: str = "auto",
             on_round: Optional[Callable[[int, List[Dict[str, Any]]], Any]] = None) -> str:
    """`fedclip run` from a RunConfig as JSON (see `fedclip.run_config`), calling
    `on_round(round, rows)` after each round; returns summary.json's text."""

def sweep_json(template_json: str, out: PathLike, methods: str, test_domains: str, seeds: str,
               shard: Optional[str] = None, device: str = "auto") -> str:
    """`fedclip sweep` with a RunConfig template as JSON; returns what it did as JSON."""

def table_json(dirs: List[PathLike], out: Optional[PathLike] = None) -> str:
    """The long-form table rows of sweep or run directories as JSON."""

def domains(data: PathLike) -> List[str]:
    """The domain folders of a dataset root, in sorted order."""

def default_server_lr(server_opt: str) -> float:
    """`--server-lr`'s default for `--server-opt server_opt` (Flower's η)."""

def optimizer_settings(
    optimizer: str,
    lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    momentum: Optional[float] = None,
) -> Tuple[float, float, float]:
    """`(lr, weight_decay, momentum)` a run of `--optimizer optimizer` stores, the defaults
    filled in where `None` (Adam / AdamW: 5e-5, 0.2; SGD: CoOp's 0.002, 5e-4, momentum 0.9).
    Raises ValueError for `momentum` with Adam / AdamW, naming `--momentum`."""

def initial_parameters(dim: int, seed: int) -> npt.NDArray[np.float32]:
    """The seeded attention-adapter initialisation `fedclip run` starts the global and every
    client from, `[P]` with P = 2 d² + 2 d, laid out `[W1 | b1 | W2 | b2]` (PyTorch
    `[out, in]`). Any method's family: `Clients.initial_parameters`."""

class Client:
    """One client of a split; each split is `(paths, labels)` in split order."""

    name: str
    domain: str
    held_out: bool
    files: Tuple[List[str], List[int]]
    """Every file assigned to the client in dataset order (what `fedclip run` extracts)."""
    train: Tuple[List[str], List[int]]
    val: Tuple[List[str], List[int]]
    test: Tuple[List[str], List[int]]

class Splits:
    """The clients `fedclip run` makes of its dataset for these options (numpy-identical)."""

    def __init__(self, config_json: str) -> None:
        """`config_json`: `json.dumps(fedclip.run_config(...))`."""
    @property
    def clients(self) -> List[Client]: ...
    @property
    def classes(self) -> List[str]: ...
    @property
    def prompts(self) -> List[str]:
        """Class prompts (`prompt_template` applied), in class order."""
    def training_clients(self) -> List[int]:
        """Client indices of the training clients; trainer slot s is element s."""
    def sample_round(self, fraction: float, round: int) -> List[int]:
        """Trainer slots sampled for `round` (0-based), as `--sample-fraction` samples."""
    def check_images(self, store: FeatureStore) -> List[str]:
        """As `fedclip run` before extracting: decodes the images `store` lacks; a bad one is
        a ValueError listing every one, or with `skip_bad` it leaves the clients' files and
        splits. Returns the paths left out, relative to the data root."""

class RoundPlan:
    """What the sampled clients do this round (Rust `RoundPlan`)."""

    def __init__(
        self,
        slots: Sequence[int],
        start: Optional[npt.NDArray[np.float32]] = None,
        anchor: Optional[npt.NDArray[np.float32]] = None,
        mu: float = 0.0,
    ) -> None:
        """A plan made elsewhere (a Flower silo's row of the server's plan)."""
    @property
    def slots(self) -> List[int]: ...
    @property
    def start(self) -> Optional[npt.NDArray[np.float32]]: ...
    @property
    def anchor(self) -> Optional[npt.NDArray[np.float32]]: ...
    @property
    def mu(self) -> float: ...

class Strategy:
    """The server side `fedclip run` builds for `method` and `server_opt` (Rust
    `federated::strategy::Strategy`, Flower's method names)."""

    def __init__(self, config_json: str) -> None: ...
    def rounds(self, requested: int) -> int: ...
    def configure_train(
        self, round: int, sampled: Sequence[int], global_params: npt.NDArray[np.float32]
    ) -> Optional[RoundPlan]: ...
    def aggregate_train(
        self,
        round: int,
        global_params: npt.NDArray[np.float32],
        params: npt.NDArray[np.float32],
        slots: Sequence[int],
        train_sizes: Sequence[int],
    ) -> Optional[npt.NDArray[np.float32]]:
        """New global parameters from `[K, P]` client rows (rows `slots` updated this round),
        or None to keep the old ones."""
    def configure_evaluate(self, slot: Optional[int] = None) -> Tuple[str, Optional[int]]:
        """("zeroshot" | "global" | "mean_of_local", None) or ("own", slot)."""
    def deployed(self) -> str:
        """"nothing", "global" or "each_client"."""
    @property
    def family(self) -> str:
        """`attention`, `linear-probe`, `clip-adapter` or `tip-cache` (clients start from
        caches of their own data)."""
    def bytes_communicated(self, plan: RoundPlan, param_count: int) -> int: ...
    def bytes(
        self, plan: RoundPlan, param_count: int, dim: int = 0, train_sizes: Sequence[int] = ()
    ) -> Tuple[int, int]:
        """`(down, up)`: bytes server → clients and clients → server this round
        (Tip-Adapter counts each sampled cache from `dim` and its slot's train size)."""
    def state(self) -> Dict[str, npt.NDArray[np.float32]]: ...
    def load_state(self, saved: Dict[str, npt.NDArray[np.float32]]) -> None:
        """Restores what `state()` returned."""

class Clients:
    """K training clients' parameters of the method's family (the attention adapter, a
    linear probe, CLIP-Adapter or Tip-Adapter's cache) on one engine, trained together as
    `fedclip run` does (Rust `AdapterBackend`). Slot k holds `train[k] = (features [N_k, D],
    labels [N_k])`. `cache_capacity`: Tip-Adapter's cache rows (default: the largest train
    split here; a silo holding one client passes the federation's)."""

    def __init__(
        self,
        config_json: str,
        texts: npt.NDArray[np.float32],
        logit_scale: float,
        train: Sequence[Tuple[npt.NDArray[np.float32], npt.NDArray[np.uint32]]],
        device: str = "auto",
        cache_capacity: Optional[int] = None,
    ) -> None: ...
    @property
    def num_clients(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def param_count(self) -> int:
        """Values in one client's parameters."""
    @property
    def tensors(self) -> List[Tuple[str, List[int]]]:
        """One client's parameters as `(name, shape)` in row order (the adapter files')."""
    @property
    def layout(self) -> str:
        """The adapter files' `layout` metadata."""
    @property
    def initial_parameters(self) -> npt.NDArray[np.float32]:
        """The global parameters before round 1 (Tip-Adapter: the union of the caches)."""
    @property
    def local_epochs(self) -> int:
        """Local epochs per round (the strategy's; Tip-Adapter: 0)."""
    @property
    def train_sizes(self) -> List[int]: ...
    def local_update(self, round: int, plan: RoundPlan) -> List[List[float]]:
        """The local epochs of `round` for `plan.slots`; each slot's step losses."""
    def finetune(
        self, global_params: npt.NDArray[np.float32], steps: Optional[int] = None
    ) -> None:
        """`--finetune-local-steps`: every slot from `global_params`, fresh optimiser, `steps`
        (default: the run's) local steps on its own train split; see `get_parameters`."""
    def optimizer_state(
        self,
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], List[int]]:
        """Adam's `(m [K·P], v [K·P], steps [K])`, what `keep_optimizer_state` carries."""
    def set_optimizer_state(
        self, m: npt.NDArray[np.float32], v: npt.NDArray[np.float32], steps: Sequence[int]
    ) -> None:
        """Restores what `optimizer_state()` returned."""
    def get_parameters(self) -> npt.NDArray[np.float32]:
        """`[K, P]`."""
    def set_parameters(self, params: npt.NDArray[np.float32]) -> None: ...
    def predict(self, k: int, features: npt.NDArray[np.float32]) -> npt.NDArray[np.uint32]: ...
    def evaluate(
        self,
        splits: Sequence[Tuple[str, npt.NDArray[np.float32], npt.NDArray[np.uint32]]],
        params: Optional[npt.NDArray[np.float32]] = None,
    ) -> List[Tuple[str, float, int]]:
        """`(split, accuracy, samples)` of each non-empty split with `params` (one client's;
        Tip-Adapter also a union; None: zero-shot), as `fedclip run` scores metrics.csv."""

def sample_clients(n: int, fraction: float, seed: int, round: int) -> List[int]:
    """Trainer slots `fedclip run` samples for `round` (0-based) out of n training clients."""

def evaluate_splits(
    texts: npt.NDArray[np.float32],
    splits: Sequence[Tuple[str, npt.NDArray[np.float32], npt.NDArray[np.uint32]]],
    params: Optional[npt.NDArray[np.float32]] = None,
) -> List[Tuple[str, float, int]]:
    """`(split, accuracy, samples)` of each non-empty `(split, features, labels)` with the
    attention adapter `params` (None: zero-shot), as `fedclip run` scores a metrics.csv row.
    Any method's family: `Clients.evaluate`."""

def mean_loss(losses: Sequence[float]) -> Optional[float]:
    """A train row's `loss`: the mean of the step losses (None: no step)."""

def mean_of_rows(params: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The mean of `[K, P]` rows (what `local` deploys on held-out clients)."""

def free_run_dir(base: PathLike, resume: bool = False) -> str:
    """`base` if it holds nothing, else the first free `base-2`, `base-3`, … (with
    `resume`, the last that holds a run), as `fedclip run` without `--out`."""

class RunDir:
    """A run directory written by `fedclip run`'s own code for rounds run elsewhere (the
    Flower server): claimed, with config.json and an empty metrics.csv, on creation."""

    def __init__(self, config_json: str, resume: bool = False) -> None:
        """With `resume`, as `fedclip run --resume`: the settings must equal the interrupted
        run's (the round count may grow); `saved` holds its state."""
    @property
    def out(self) -> str: ...
    @property
    def saved(self) -> Optional[Dict[str, Any]]:
        """The resumed run's state (None: a new run, or none finished a round):
        `rounds_done`, `global`, `clients` `[K·P]`, `best` `(round, val, deployed)` or None,
        `seconds_training`, `bytes_per_round`, `server` (`Strategy.state()`)."""
    def save_state(
        self,
        rounds_done: int,
        global_params: npt.NDArray[np.float32],
        clients: npt.NDArray[np.float32],
        best: Optional[Tuple[int, float, npt.NDArray[np.float32]]],
        seconds_training: float,
        bytes_per_round: Sequence[Tuple[int, int]],
        server: Dict[str, npt.NDArray[np.float32]],
    ) -> None:
        """`state.safetensors` after round `rounds_done`, what `saved` gives back."""
    def append_rows(
        self, rows: Sequence[Tuple[int, str, str, float, int, Optional[float]]]
    ) -> None:
        """`(round, client, split, accuracy, samples, loss)` rows, round 1-based."""
    def write_adapter(
        self,
        file: str,
        params: npt.NDArray[np.float32],
        names: Sequence[str],
        tensors: Sequence[Tuple[str, Sequence[int]]],
        layout: str,
    ) -> None:
        """`<out>/<file>` with the rows of `params` `[R, P]` under `tensors`' names
        (`Clients.tensors`, prefixed by `names` when R > 1) and `layout` (`Clients.layout`)."""
    def finish(
        self,
        clients: Sequence[Tuple[str, bool]],
        trainees: Sequence[int],
        rounds_done: int,
        best: Optional[Tuple[int, float]],
        adapter_parameters: int,
        images_extracted: int,
        images_from_cache: int,
        bytes_per_round: Sequence[Tuple[int, int]],
        seconds_extracting: float = 0.0,
        seconds_training: float = 0.0,
        finetuned: Optional[Dict[str, float]] = None,
        skipped_images: Sequence[str] = (),
    ) -> str:
        """Writes accuracy.svg and summary.json; returns summary.json's text."""
