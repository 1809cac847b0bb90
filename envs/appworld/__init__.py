"""AppWorld (PyPI `appworld`) as an eprl environment, run in its own venv behind an HTTP server.

Nothing here imports appworld (it freezes the clock with freezegun): `setup` builds the venv
and the world, `server` runs `appworld.serve.environment` with uvicorn, `client` talks httpx.
"""

from eprl.envs.registry import register_env

ENTRY_POINT = "eprl.envs.appworld.env:AppWorldEnv"


def register_appworld_envs() -> None:
    """Register ``eprl/AppWorld-v0`` (kwargs: split, difficulty, denylist, reward, max_interactions, ...)."""
    register_env("AppWorld-v0", ENTRY_POINT)


register_appworld_envs()
