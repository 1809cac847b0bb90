"""Where the parts of a Hugging Face causal LM are (backbone, lm_head, decoder layers), peft-wrapped or not.

Used by the log-prob code (training/logprobs.py) and by FSDP sharding (training/distributed.py); in a module
of their own so that neither imports the other for them.
"""

from __future__ import annotations

from torch import nn


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder backbone returning last hidden states, lm_head) of a HF causal LM, peft-wrapped or not.

    peft: `get_base_model()` unwraps the PeftModel (LoRA layers stay injected in the modules).
    transformers: `get_decoder()` finds the backbone (`model.model` for Llama/Qwen-style LMs);
    if it returns the LM itself we fall back to `base_model_prefix` / `.model`.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = base.get_decoder() if hasattr(base, "get_decoder") else None
    if backbone is None or backbone is base:
        backbone = getattr(base, getattr(base, "base_model_prefix", "model"), None)
        backbone = getattr(base, "model", None) if backbone is None or backbone is base else backbone
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else getattr(base, "lm_head", None)
    if backbone is None or head is None:
        raise ValueError(f"cannot find decoder backbone and lm_head in {type(base).__name__}")
    cfg = getattr(base, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(cfg, attr, None) not in (None, 1.0):
            raise ValueError(f"{type(base).__name__} sets config.{attr}; the chunked head does not apply it")
    return backbone, head


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a HF causal LM (peft-wrapped or not)."""
    backbone, _ = causal_lm_parts(model)
    layers = getattr(backbone, "layers", None)
    if layers is not None:
        return list(layers)
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
