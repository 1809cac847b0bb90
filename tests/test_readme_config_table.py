"""The README's configuration table names real fields with their real defaults (`eprl config` is the source)."""

from __future__ import annotations

import re
from pathlib import Path

from eprl.training.config import RunConfig

README = Path(__file__).resolve().parent.parent / "README.md"


def _defaults() -> dict[str, object]:
    out: dict[str, object] = {}

    def walk(model, prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann, f"{prefix}{name}.")
            else:
                out[prefix + name] = field.get_default(call_default_factory=True)

    walk(RunConfig, "")
    return out


def _rows() -> list[tuple[str, str]]:
    """(dotted field, README default) for every field named in the table, compound rows split."""
    section = README.read_text().split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    pairs = []
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = [n.strip(" `") for n in re.split(r"\s*(?:/|,)\s*", cells[0])]
        values = (
            [v.strip(" `") for v in re.split(r"\s*(?:/|,)\s*", cells[1])] if len(names) > 1 else [cells[1].strip(" `")]
        )
        assert len(names) == len(values), f"README row {cells[0]}: {len(names)} names, {len(values)} defaults"
        section_prefix = names[0].rsplit(".", 1)[0] + "."
        for name, value in zip(names, values):
            pairs.append((name if "." in name else section_prefix + name, value))
    return pairs


def _same(readme: str, actual: object) -> bool:
    if actual is None:
        return readme in ("None", "null")
    if isinstance(actual, bool):
        return readme.lower() == str(actual).lower()
    if isinstance(actual, (int, float)):
        try:
            return float(readme) == float(actual)
        except ValueError:
            return False
    return readme == str(actual)


def test_readme_config_table_matches_the_config():
    defaults, rows = _defaults(), _rows()
    assert len(rows) >= 25, rows  # the table was parsed, not skipped
    for name, value in rows:
        if name.startswith("task.env.kwargs."):  # env keyword arguments, documented by the env
            continue
        assert name in defaults, f"README names {name!r}, which `eprl config` does not have"
        assert _same(value, defaults[name]), f"README says {name} defaults to {value!r}; it is {defaults[name]!r}"
