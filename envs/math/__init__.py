"""Math environments: datasets checked with math-verify, procedural arithmetic and countdown."""

from eprl.envs.registry import register_env

ENTRY_POINT = "eprl.envs.math.env:MathEnv"


def register_math_envs() -> None:
    """Register the built-in math env ids (dataset ones need ``source=``)."""
    register_env("Math-v0", ENTRY_POINT, mode="single")
    register_env("MathTool-v0", ENTRY_POINT, mode="tool")
    register_env("MathFeedback-v0", ENTRY_POINT, mode="feedback")
    register_env("Arithmetic-v0", ENTRY_POINT, source="arithmetic", mode="single")
    register_env("ArithmeticTool-v0", ENTRY_POINT, source="arithmetic", mode="tool")
    register_env("Countdown-v0", ENTRY_POINT, source="countdown", mode="single")
