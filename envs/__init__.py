"""Text environments (gymnasium.Env, str in / str out) and their registry (namespace ``eprl``)."""

from eprl.envs.base import EpisodeOverError, TextEnv, TextSpace
from eprl.envs.math import register_math_envs
from eprl.envs.registry import EnvKwargsError, UnknownEnvironmentError, list_envs, load_plugins, make, register_env

register_math_envs()
from eprl.envs import appworld  # noqa: E402,F401  (registers eprl/AppWorld-v0)

# Installed plugins ("eprl.envs" entry points) register on import, so that after `import eprl.envs`
# plain `gymnasium.make("eprl/<plugin id>")` finds them too (gymnasium 1.x loads no plugins itself).
load_plugins()

__all__ = [
    "TextEnv",
    "TextSpace",
    "EpisodeOverError",
    "UnknownEnvironmentError",
    "EnvKwargsError",
    "make",
    "register_env",
    "list_envs",
    "load_plugins",
]
