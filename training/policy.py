"""Load the policy: the embedded tiny default, any HF causal LM directory / hub id, or a checkpoint.

Parameters stay float32 (master weights); `model.dtype` selects the autocast compute dtype.
With `model.lora`, a peft LoRA adapter is trained instead of all weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from eprl.errors import EprlError

from .config import ConfigError, RunConfig, TaskSuite

log = logging.getLogger("eprl.training.policy")


class ModelLoadError(EprlError, RuntimeError):
    """The model could not be loaded; the message says what to pass instead."""


def env_factory(suite: TaskSuite, split: str):
    """A zero-arg callable making the suite's env for `split` ('train' or 'eval')."""
    from eprl import envs

    spec = getattr(suite, split)
    # ${VAR} in string kwargs expands from the environment (e.g. ${EPRL_MATH_DATA}/gsm8k_test.jsonl).
    kwargs = {
        k: os.path.expandvars(v) if isinstance(v, str) else v
        for k, v in {**suite.env.kwargs, **spec.env_kwargs}.items()
    }
    try:  # fail now, in one line naming the suite's field, on a bad id, kwargs or data
        envs.make(suite.env.id, **kwargs).close()
    except envs.UnknownEnvironmentError as err:
        raise ConfigError(f"task.env.id: {err}") from None
    except envs.EnvKwargsError as err:
        fields = [
            f"task.{split}.env_kwargs.{k}" if k in spec.env_kwargs else f"task.env.kwargs.{k}" for k in err.unexpected
        ]
        raise ConfigError(f"{', '.join(fields)}: {err}") from None
    except (ValueError, TypeError, OSError, ImportError) as err:  # the env's own complaint (bad value, unreadable data)
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"task.env.kwargs: {suite.env.id} ({split} split): {message}") from None
    return lambda: envs.make(suite.env.id, **kwargs)


def resolve_model_path(cfg: RunConfig) -> str:
    """An HF directory or hub id: the configured one (a .gguf file or packaged short name is converted
    once and cached, training/model_source.py), else the embedded tiny default."""
    if cfg.model.name_or_path is not None:
        from .model_source import resolve_model_source

        return resolve_model_source(cfg.model.name_or_path)
    from .config import EnvSpec, TaskSuite
    from .tiny_default import WARM_START_ENV, build_default_policy

    # The scripted warm-start expert knows calculator arithmetic; other suites start from that policy too.
    suite = (
        cfg.task
        if cfg.task.env.id == WARM_START_ENV
        else TaskSuite(env=EnvSpec(id=WARM_START_ENV, kwargs={"difficulty": 2, "max_turns": 4}))
    )
    if suite is not cfg.task:
        log.info(f"no model given: warm-starting the tiny default on {WARM_START_ENV} (the scripted expert's domain)")
    env_key = {"id": suite.env.id, **suite.env.kwargs, **suite.train.env_kwargs}
    return str(
        build_default_policy(
            env_factory(suite, "train"),
            env_key,
            sft_steps=cfg.model.tiny_sft_steps,
            noise=cfg.model.tiny_sft_noise,
            seed=cfg.run.seed,
            cache_dir=cfg.model.cache_dir,
        )
    )


def check_serializable(model, path: str) -> None:
    """A run must be able to checkpoint: fail before the first iteration, not at the first save hours later."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not quantizer.is_serializable():
        method = getattr(getattr(model.config, "quantization_config", None), "quant_method", "quantized")
        raise ModelLoadError(
            f"model.name_or_path={path!r}: the model is {method}-quantized and cannot be saved, so "
            "no checkpoint could be written; give the .gguf file itself (converted to float32 once) "
            "or a dequantized HF directory"
        )


def load_policy(path: str, cfg: RunConfig):
    """(model, tokenizer) from a directory or hub id; wraps LoRA if configured or found.

    A directory holding adapter_config.json is a LoRA checkpoint: its base model is loaded from the
    adapter's `base_model_name_or_path` and the adapter stays trainable. A new adapter records the
    base as an absolute directory (or the hub id), so its checkpoints load from any working directory.
    """
    if Path(path).is_dir():
        path = str(Path(path).resolve())
    is_adapter = (Path(path) / "adapter_config.json").is_file()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if is_adapter:
            from peft import PeftConfig, PeftModel

            base_path = PeftConfig.from_pretrained(path).base_model_name_or_path
            if not base_path:
                raise ValueError(f"{path}/adapter_config.json has no base_model_name_or_path")
            base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
            model = PeftModel.from_pretrained(base, path, is_trainable=True)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"model.name_or_path={path!r}: cannot load it ({str(err).splitlines()[0]}). Pass a local "
            "HF model directory, a hub id reachable from this machine, or leave it unset for the "
            "embedded tiny default."
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_serializable(model, path)
    if cfg.model.lora and not is_adapter:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.model.lora_rank,
                lora_alpha=cfg.model.lora_alpha,
                target_modules=list(cfg.model.lora_target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    model.eval()
    return model, tokenizer
