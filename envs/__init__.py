"""Text environments (gymnasium.Env, str in / str out) and their registry (namespace ``eprl``)."""
from envs.base import EpisodeOverError, TextEnv, TextSpace
from envs.registry import UnknownEnvironmentError, list_envs, load_plugins, make, register_env
from envs.math import register_math_envs

register_math_envs()
import envs.appworld  # noqa: E402,F401  (registers eprl/AppWorld-v0)

__all__ = ["TextEnv", "TextSpace", "EpisodeOverError", "UnknownEnvironmentError",
           "make", "register_env", "list_envs", "load_plugins"]
