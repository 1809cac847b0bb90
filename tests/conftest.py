"""Shared fixtures: a real tiny Qwen3 model and a locally trained tokenizer (no downloads)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
MATH_DATA = Path(os.environ.get("EPRL_MATH_DATA", REPO.parent / "shared" / "data" / "math"))


def pytest_configure(config):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def math_data() -> Path:
    if not (MATH_DATA / "gsm8k_test.jsonl").is_file():
        pytest.skip(f"math datasets not found at {MATH_DATA}; set EPRL_MATH_DATA to the shared/data/math folder")
    return MATH_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from eprl.training.tiny_default import train_tokenizer

    rng = random.Random(0)
    texts = [
        f"Compute {rng.randint(1, 99)}*{rng.randint(1, 99)}+{rng.randint(1, 99)}. <calc>1+2</calc> <result>3</result> "
        f"\\boxed{{{rng.randint(1, 999)}}} Incorrect, try again."
        for _ in range(300)
    ]
    return train_tokenizer(texts, vocab_size=300)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from eprl.training.tiny_default import build_model

    return build_model(tiny_tokenizer, seed=0).eval()


@pytest.fixture(scope="session")
def eprl_cache(tmp_path_factory) -> Path:
    """One cache dir per test session, so the embedded default is built once."""
    path = Path(os.environ.get("EPRL_TEST_CACHE", tmp_path_factory.mktemp("eprl-cache")))
    return path
