"""Write a trained MA model as a checkpoint directory that `mabert-hw` (checkpoint.load) and
torch_ref.ma_bert.load_official both read: config.json with the official MA config keys,
model.safetensors with the official (BertModel-level) key names, unfolded, and the tokenizer files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save

from ..atomic import atomic_write
from ..inputs import TOKENIZER_FILES
from ..spec import ModelSpec
from .ma_bert import MABertModel

COPIED_TOKENIZER_FILES = TOKENIZER_FILES + ("special_tokens_map.json",)  # HF reads the special-token map too


def ma_config(spec: ModelSpec) -> dict:
    v = spec.variant
    return {
        "model_type": "bert", "vocab_size": spec.vocab_size, "hidden_size": spec.hidden,
        "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
        "intermediate_size": spec.intermediate, "max_position_embeddings": spec.max_positions,
        "type_vocab_size": spec.type_vocab_size, "layer_norm_eps": spec.eps,
        "ffn_hidden_act": v.ffn_activation, "norm_type": "Power" if v.norm == "powernorm" else "Layer",
        "use_softmax_approx": v.softmax == "mlp", "share_softmax_nn": v.share_softmax,
        "softmax_input_size": v.softmax_input, "softmax_hidden_layer_size": v.softmax_hidden,
        "mask_type": v.mask,
    }


def save_ma_dir(model: MABertModel, out: Path, tokenizer_dir: Path | None, extra: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}  # shared copies apart
    # save_file writes through a private temporary (mode 0o600) that it renames: serialised here and written
    # by atomic_write, the file gets the mode any file gets (0o666 less the umask), at the cost of a copy in memory
    with atomic_write(out / "model.safetensors", "wb") as handle:
        handle.write(save(state))
    (out / "config.json").write_text(json.dumps({**ma_config(model.spec), **(extra or {})}, indent=2))
    for name in COPIED_TOKENIZER_FILES:
        if tokenizer_dir is not None and (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out
