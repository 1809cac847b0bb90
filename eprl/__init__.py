"""eprl: entropy-preserving RL for multi-turn LLM agents.

The subpackages live in the checkout's top-level folders `agents/`, `envs/` and `training/` (the layout users
asked for) and are imported as `eprl.agents`, `eprl.envs`, `eprl.training`, so that installing eprl puts no
generic top-level names into site-packages. An installed wheel holds them under `eprl/`; the editable install
maps them with setuptools' `package-dir`; in a plain checkout (`PYTHONPATH=.`) this file adds the checkout to
the package's search path, so all three ways import the same files.
"""

import os as _os

__version__ = "0.1.0"

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "training")) and _os.path.isfile(
    _os.path.join(_root, "training", "cli.py")
):  # a checkout or an editable install, not a wheel
    __path__.append(_os.path.join(_root))
