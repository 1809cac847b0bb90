"""Math problems from local JSONL files or Hugging Face datasets."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from eprl.errors import EprlError

DATA_ENV_VAR = "EPRL_MATH_DATA"
QUESTION_COLUMNS = ("question", "problem", "prompt", "query")
ANSWER_COLUMNS = ("answer", "final_answer", "solution")


class DatasetError(EprlError, ValueError):
    """A dataset file that cannot be used; the message names the file (and line) and the fix."""


@dataclass(frozen=True)
class Problem:
    """One task: ``answer`` is the gold final answer; ``numbers`` is set for countdown."""

    id: str
    question: str
    answer: str
    source: str = ""
    numbers: tuple[int, ...] = ()
    solution: str = ""  # a worked answer when known (procedural problems)


def default_data_dir() -> Path:
    """$EPRL_MATH_DATA, else ``<repo>/../shared/data/math``."""
    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get(DATA_ENV_VAR, repo.parent / "shared" / "data" / "math"))


def countdown_numbers(source: str) -> tuple[int, ...]:
    """'countdown/cd3:30,100,93' -> (30, 100, 93); () when ``source`` is not countdown."""
    match = re.search(r"countdown/\w+:([\d,\s]+)$", source or "")
    return tuple(int(x) for x in match.group(1).split(",") if x.strip()) if match else ()


def load_problems(source: str, split: str | None = None, limit: int | None = None) -> list[Problem]:
    """Load problems from a JSONL path, a name in $EPRL_MATH_DATA, or ``hf:org/name``.

    A directory or data-dir name combines with ``split``: ``gsm8k`` + ``test`` ->
    ``gsm8k_test.jsonl``. A non-existing string containing '/' is a HF dataset id.
    """
    if source.startswith("hf:"):
        return _load_hf(source[3:], split, limit)
    path = _resolve_local(source, split)
    if path is not None:
        return _load_jsonl(path, limit)
    looks_like_path = source.startswith((".", "/", "~")) or source.endswith((".jsonl", ".json"))
    if "/" in source and not looks_like_path:
        return _load_hf(source, split, limit)
    raise FileNotFoundError(
        f"math problems not found: {source!r} (split={split!r}); give a JSONL path, a file name in "
        f"${DATA_ENV_VAR} (now {default_data_dir()}), or a dataset id like 'hf:openai/gsm8k'"
    )


def _resolve_local(source: str, split: str | None) -> Path | None:
    base = Path(source).expanduser()
    candidates = [base] if base.is_absolute() else [base, default_data_dir() / base]
    for c in candidates:
        names = [c, c.with_name(c.name + ".jsonl")]
        if split:
            names += [c / f"{split}.jsonl", c.with_name(f"{c.name}_{split}.jsonl")]
        for p in names:
            if p.is_file():
                return p
    return None


def _load_jsonl(path: Path, limit: int | None) -> list[Problem]:
    problems = []
    with open(path, "rb") as f:  # decoded per line, so a bad byte is reported with its line
        for lineno, raw in enumerate(f, 1):
            if limit is not None and len(problems) >= limit:
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(
                    f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                    "save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question, answer = row["question"], row["answer"]
            except json.JSONDecodeError as e:
                raise DatasetError(
                    f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); "
                    "each line must be one object with 'question' and 'answer'"
                ) from None
            except (KeyError, TypeError) as e:
                what = f"no {e}" if isinstance(e, KeyError) else f"a {type(row).__name__}, not an object"
                raise DatasetError(
                    f"{path}:{lineno}: malformed row ({what}); each line must be one JSON object "
                    "with 'question' and 'answer'"
                ) from None
            src = str(row.get("source", path.stem))
            numbers = tuple(row["numbers"]) if "numbers" in row else countdown_numbers(src)
            problems.append(
                Problem(
                    id=str(row.get("id", f"{path.stem}-{lineno}")),
                    question=str(question),
                    answer=str(answer),
                    source=src,
                    numbers=numbers,
                )
            )
    if not problems and limit != 0:
        raise DatasetError(
            f"{path}: no problems (the file is empty); give a JSONL file with one "
            '{"question": ..., "answer": ...} object per line'
        )
    return problems


def _load_hf(name: str, split: str | None, limit: int | None) -> list[Problem]:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"loading the Hugging Face dataset {name!r} needs `datasets`: pip install eprl[datasets]"
        ) from e
    config = None
    if ":" in name:  # 'org/name:config'
        name, config = name.split(":", 1)
    rows = datasets.load_dataset(name, config, split=split or "train")
    columns = list(rows.column_names)
    q_col = next((c for c in QUESTION_COLUMNS if c in columns), None)
    a_col = next((c for c in ANSWER_COLUMNS if c in columns), None)
    if q_col is None or a_col is None:
        raise ValueError(f"dataset {name!r} has columns {columns}; need one of {QUESTION_COLUMNS} and {ANSWER_COLUMNS}")
    problems = []
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            break
        problems.append(
            Problem(
                id=str(row.get("id", f"{name}/{split or 'train'}/{i}")),
                question=str(row[q_col]),
                answer=_final_answer(str(row[a_col])),
                source=name,
            )
        )
    return problems


def _final_answer(text: str) -> str:
    """GSM8K '... #### 18' -> '18'; a MATH solution -> its last \\boxed{} content."""
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    from eprl.envs.math.verify import extract_boxed

    boxed = extract_boxed(text)
    return boxed if boxed is not None else text.strip()
