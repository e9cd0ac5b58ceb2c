"""crammed BERT / UltraFastBERT checkpoints for the tests: the official key set, written down here from the
official code (pbelcak/UltraFastBERT, cramming), at tiny sizes, with random values, saved as the official
code saves them (UltraFastBERT's published config.json + model.safetensors, cramming's model_config.json +
model.pth, and half-precision state dicts)."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import save_file

from mabert_hw import checkpoint

VOCAB, HIDDEN, HEADS, LAYERS, POSITIONS = 61, 24, 3, 2, 40


def arch_config(**changes) -> dict:
    """pbelcak/UltraFastBERT training/cramming/config/arch/crammed-bert-fff.yaml, resolved as
    OmegaConf.to_container(resolve=True) writes it, at tiny sizes; `changes` use dotted paths."""
    arch = {
        "architectures": ["ScriptableCrammedBERT"], "num_transformer_layers": LAYERS, "intermed_type": "fff",
        "hidden_size": HIDDEN, "intermed_size": 2, "intermed_depth": 3, "hidden_dropout_prob": 0.1,
        "norm": "LayerNorm", "norm_eps": 1e-12, "norm_scheme": "pre", "nonlin": "GELU", "tie_weights": True,
        "decoder_bias": False, "sparse_prediction": 0.25, "loss": "cross-entropy", "objective_layout": "MLM",
        "embedding": {"vocab_size": VOCAB, "pos_embedding": "scaled-sinusoidal", "dropout_prob": 0.1,
                      "pad_token_id": 0, "max_seq_length": POSITIONS, "embedding_dim": HIDDEN,
                      "normalization": True, "stable_low_precision": False},
        "attention": {"type": "self-attention", "causal_attention": False, "num_attention_heads": HEADS,
                      "dropout_prob": 0.1, "skip_output_projection": False, "qkv_bias": False,
                      "rotary_embedding": False, "seq_op_in_fp32": False, "sequence_op": "torch-softmax"},
        "init": {"type": "normal", "std": 0.02}, "ffn_layer_frequency": 1, "skip_head_transform": True,
        "use_bias": False, "final_norm": True, "num_labels": None,
        "classification_head": {"pooler": "avg", "include_ff_layer": True, "head_dim": 1024, "nonlin": "Tanh",
                                "classifier_dropout": 0.1},
    }
    for path, value in changes.items():
        node = arch
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return arch


def official_key_shapes(arch: dict) -> dict[str, tuple[int, ...]]:
    """The state dict of ScriptableLMForPreTraining (pbelcak/UltraFastBERT training/cramming/
    architectures/crammed_bert.py), module by module, for the arch config above."""
    C = arch["hidden_size"]
    keys = {"encoder.embedding.word_embedding.weight": (VOCAB, C)}  # components.py EmbeddingComponent
    position = arch["embedding"]["pos_embedding"]  # cramming embeddings.py: SinusoidalPositional.pe is
    if position == "scaled-sinusoidal":  # registered persistent=False, so only the scale is saved
        keys["encoder.embedding.pos_embedding.scale_factor"] = (1,)  # ScaledSinosoidal
    elif position == "learned":  # LearnablePositional: nn.Embedding + a persistent position_ids buffer
        keys["encoder.embedding.pos_embedding.embedding.weight"] = (POSITIONS, C)
        keys["encoder.embedding.pos_embedding.position_ids"] = (1, POSITIONS)
    keys["encoder.embedding.norm.weight"] = keys["encoder.embedding.norm.bias"] = (C,)  # normalization: True
    for layer in range(arch["num_transformer_layers"]):
        p = f"encoder.layers.{layer}."  # crammed_bert.py TransformerLayer: norm1, norm2, attn, ffn
        for norm in ("norm1", "norm2"):
            keys[f"{p}{norm}.weight"] = keys[f"{p}{norm}.bias"] = (C,)
        # cramming attention.py SeqFirstSelfAttention ("self-attention"): a fused Linear(C, 3C, bias=qkv_bias)
        # and the buffer norm_factor = torch.tensor(D).rsqrt(); AttentionComponent.dense: Linear(C, C, bias=use_bias)
        keys[p + "attn.self_attention.query_key_value.weight"] = (3 * C, C)
        if arch["attention"]["qkv_bias"]:
            keys[p + "attn.self_attention.query_key_value.bias"] = (3 * C,)
        keys[p + "attn.self_attention.norm_factor"] = ()
        keys[p + "attn.dense.weight"] = (C, C)
        if arch["use_bias"]:
            keys[p + "attn.dense.bias"] = (C,)
        if arch["intermed_type"] == "fff":  # UltraFastBERT fff.py FFF(C, C, intermed_depth, intermed_size)
            width = arch["intermed_size"] * (2 ** (arch["intermed_depth"] + 1) - 1)
            keys.update({p + "ffn.linear_in.weight": (width, C), p + "ffn.linear_in.bias": (width,),
                         p + "ffn.linear_out.weight": (C, width)})
        else:  # crammed_bert.py FFNComponent: dense_in, nonlin, dense_out, bias=use_bias
            F = arch["intermed_size"]
            keys.update({p + "ffn.dense_in.weight": (F, C), p + "ffn.dense_out.weight": (C, F)})
            if arch["use_bias"]:
                keys.update({p + "ffn.dense_in.bias": (F,), p + "ffn.dense_out.bias": (C,)})
    keys["encoder.final_norm.weight"] = keys["encoder.final_norm.bias"] = (C,)  # ScriptableLM, final_norm: True
    keys["decoder.weight"] = (VOCAB, C)  # ScriptableLMForPreTraining: tied to word_embedding, decoder_bias False
    return keys


def random_state(arch: dict, seed: int, std: float = 0.2) -> dict[str, np.ndarray]:
    """Random values for the official key set; norm gains around 1, the tied decoder is the embedding,
    norm_factor is the buffer's value, 1/sqrt(D) in float32."""
    rng = np.random.default_rng(seed)
    D = arch["hidden_size"] // arch["attention"]["num_attention_heads"]
    state = {}
    for key, shape in official_key_shapes(arch).items():
        if key.endswith("norm_factor"):
            state[key] = np.array(1.0 / np.sqrt(D), np.float32)
        elif key.endswith("position_ids"):
            state[key] = np.arange(POSITIONS, dtype=np.int64)[None, :]
        elif key.endswith("scale_factor"):
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            offset = 1.0 if "norm" in key.split(".")[-2] and key.endswith("weight") else 0.0
            state[key] = (offset + rng.normal(0.0, std, shape)).astype(np.float32)
    state["decoder.weight"] = state["encoder.embedding.word_embedding.weight"]
    return state


def save_hf(directory, arch: dict, state: dict[str, np.ndarray]):
    """As UltraFastBERT publishes it: crammedBertConfig's config.json + model.safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["ScriptableLMForPreTraining"], "model_type": "crammedBERT", "arch": arch,
              "torch_dtype": "float32"}
    (directory / "config.json").write_text(json.dumps(config))
    save_file({k: v for k, v in state.items() if k != "decoder.weight"},  # one name of a tied pair is kept
              str(directory / "model.safetensors"))
    return directory


def save_cramming(directory, arch: dict, state: dict[str, np.ndarray]):
    """As cramming's backend/torch_default.py save_final_model: model_config.json + model.pth."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model_config.json").write_text(json.dumps(arch))
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, directory / "model.pth")
    return directory


CASES = {
    # UltraFastBERT defaults: FFF (K = 2 trees of depth 3), scaled sinusoids, no biases outside the FFF
    "fff-scaled-sinusoidal": ({}, save_hf),
    # plain crammed BERT with every optional tensor present: dense GELU FFN, biases, learned positions
    "ff-learned-biases": ({"intermed_type": "ff", "intermed_size": 40, "use_bias": True, "attention.qkv_bias": True,
                           "embedding.pos_embedding": "learned"}, save_cramming),
    # a dense ReLU FFN without biases, fixed (unscaled) sinusoids
    "ff-relu-sinusoidal": ({"intermed_type": "ff", "intermed_size": 36, "nonlin": "ReLU",
                            "embedding.pos_embedding": "sinusoidal"}, save_hf),
}


def load_case(tmp_path, case: str, seed: int = 3):
    changes, save = CASES[case]
    arch = arch_config(**changes)
    state = random_state(arch, seed)
    ck = checkpoint.load(save(tmp_path / case, arch, state))
    return arch, state, ck


def save_half(directory, arch: dict, state: dict[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
    """A checkpoint saved after model.to(dtype), as cramming's save_final_model writes it (model_config.json
    + model.pth); returns the stored values, widened to float32."""
    import torch

    half = {k: torch.from_numpy(v).to(dtype) if v.dtype == np.float32 else torch.from_numpy(v)
            for k, v in state.items()}
    directory.mkdir(parents=True)
    (directory / "model_config.json").write_text(json.dumps(arch))
    torch.save(half, directory / "model.pth")
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in half.items()}
