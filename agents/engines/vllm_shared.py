"""What the in-process vLLM engine (vllm.py) and the server backend (vllm_server.py) share: the worker
extension vLLM loads by name, the synced LoRA adapter's identity, and the conversion of vLLM output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .base import Generation


def to_generation(token_ids: Sequence[int], logprobs: Sequence[float], finish_reason: str | None) -> Generation:
    if len(token_ids) != len(logprobs):
        raise RuntimeError(f"vllm returned {len(token_ids)} tokens but {len(logprobs)} log-probs")
    return Generation(
        [int(t) for t in token_ids], [float(lp) for lp in logprobs], "stop" if finish_reason == "stop" else "length"
    )


@dataclass(frozen=True)
class Adapter:
    """One synced LoRA version as vLLM sees it."""

    name: str  # "eprl-v{n}": the LoRARequest name / the server's model name
    int_id: int  # n: vLLM's adapter id, never reused
    path: Path  # weights_dir/lora-v{n}


class EprlWorkerExtension:
    """Mixed into vLLM's worker (`worker_extension_cls`); called through `collective_rpc`."""

    def eprl_reload_weights(self, weights_path: str) -> None:
        self.reload_weights(weights_path=weights_path)
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
        if tied and head is not None and hasattr(head, "cpu_linear"):  # re-pack the (new) tied weight
            head.quant_method.process_weights_after_loading(head)


WORKER_EXTENSION = f"{__name__}.EprlWorkerExtension"
