"""The embedded default policy: a tiny Qwen3 model with a locally trained tokenizer.

No weights can be downloaded here, so the default run builds its own policy:
1. play scripted episodes of the default task suite through the real environment, with a share
   `noise` of them deliberately wrong (so the warm-started policy succeeds well below 100%);
2. train a byte-level BPE tokenizer on the rendered episodes and give it a chat template;
3. build a Qwen3ForCausalLM of ~2M parameters and fit it on the episodes' action tokens;
4. cache the result under a key of every setting above, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from eprl.agents.chat import ChatAgent

log = logging.getLogger("eprl.training.tiny_default")

CHAT_TEMPLATE = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MODEL_SHAPE = dict(
    hidden_size=192,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=48,
    intermediate_size=512,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    rope_theta=10000.0,
)
CACHE_VERSION = 1
WARM_START_ENV = "eprl/ArithmeticTool-v0"


# ----------------------------------------------------------------------------- demonstrations
def scripted_actions(question: str, answer: str, rng: random.Random, noise: float):
    """The expert for calculator-tool arithmetic: yields assistant messages, reads observations.

    With probability `noise` the episode contains a deliberate mistake (a guessed answer without
    the tool, or a miscopied result), so the warm-started policy is imperfect.
    """
    expr = re.search(r"Compute\s+(.+?)\.?\s*$", question.splitlines()[0]).group(1).strip()
    slip = rng.randint(1, 9) * rng.choice([-1, 1])
    mode = rng.choice(["guess", "miscopy"]) if rng.random() < noise else "expert"
    if mode == "guess":
        yield f"\\boxed{{{int(answer) + slip}}}"
        return
    observation = yield f"<calc>{expr}</calc>"
    value = re.search(r"<result>(.*?)</result>", observation).group(1)
    yield f"\\boxed{{{int(value) + slip if mode == 'miscopy' else value}}}"


def demonstration_messages(env, task_index: int, rng: random.Random, noise: float) -> list[dict[str, str]]:
    obs, info = env.reset(options={"task_index": task_index})
    problem = env.unwrapped.problem
    messages = [{"role": "user", "content": obs}]
    policy = scripted_actions(problem.question, problem.answer, rng, noise)
    action = next(policy)
    while True:
        messages.append({"role": "assistant", "content": action})
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            return messages
        messages.append({"role": "user", "content": obs})
        action = policy.send(obs)


# ----------------------------------------------------------------------------- tokenizer + model
def train_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    # Digits split one by one: numbers are copied digit by digit, which a tiny model learns fast.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, seed: int) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_SHAPE,
    )
    return Qwen3ForCausalLM(config)


def supervised_warm_start(
    model, tokenizer, conversations, steps: int, seed: int, batch_size: int = 16, lr: float = 2e-3
) -> list[float]:
    """Cross-entropy on action tokens only (the same masks the RL learner uses)."""
    agent = ChatAgent(tokenizer)
    examples = []
    for messages in conversations:
        state = agent.start(messages[0]["content"])
        for msg in messages[1:]:
            if msg["role"] == "assistant":
                ids = tokenizer(msg["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                agent.record_action(state, ids, [0.0] * len(ids))
            else:
                agent.record_observation(state, msg["content"])
        examples.append((state.token_ids, state.loss_mask))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / max(steps, 1)))
    model.train()
    losses = []
    for step in range(steps):
        pick = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
        width = max(len(examples[i][0]) for i in pick)
        ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        mask = torch.zeros((batch_size, width))
        attn = torch.zeros((batch_size, width), dtype=torch.long)
        for row, i in enumerate(pick):
            toks, m = examples[i]
            ids[row, : len(toks)], mask[row, : len(toks)], attn[row, : len(toks)] = (
                torch.tensor(toks),
                torch.tensor(m, dtype=torch.float),
                1,
            )
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log.info(f"  warm-start step {step:4d}/{steps}  loss {loss.item():.3f}")
    model.eval()
    return losses


# ----------------------------------------------------------------------------- cached entry point
def _cache_root(cache_dir: str | None) -> Path:
    from .model_source import cache_root  # one definition of $EPRL_CACHE's default

    return Path(cache_dir) if cache_dir else cache_root()


def build_default_policy(
    make_env,
    env_key: dict,
    *,
    sft_steps: int,
    noise: float,
    seed: int = 0,
    num_demos: int = 2000,
    cache_dir: str | None = None,
) -> Path:
    """Return the directory of the warm-started tiny model for this env, building it if needed."""
    key = json.dumps(
        dict(v=CACHE_VERSION, shape=MODEL_SHAPE, env=env_key, steps=sft_steps, noise=noise, seed=seed, demos=num_demos),
        sort_keys=True,
        default=str,
    )
    target = _cache_root(cache_dir) / "tiny" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (target / "config.json").is_file():
        return target
    log.info(f"building the embedded tiny policy (cached at {target})")
    rng = random.Random(seed)
    env = make_env()
    # Demonstrations use task indices far above those RL and evaluation draw first.
    conversations = [demonstration_messages(env, 10_000_000 + i, rng, noise) for i in range(num_demos)]
    tokenizer = train_tokenizer([CHAT_TEMPLATE] + [m["content"] for c in conversations for m in c])
    model = build_model(tokenizer, seed)
    log.info(
        f"  tiny Qwen3: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocab {len(tokenizer)}"
    )
    supervised_warm_start(model, tokenizer, conversations, sft_steps, seed)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "eprl_tiny.json").write_text(key)
    if target.exists():  # another process won the race; its copy is equivalent
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)
    return target
