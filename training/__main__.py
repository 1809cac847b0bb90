import os

# OpenMP (libgomp, torch's CPU backend) threads spin at every barrier by default. Next to other CPU-bound
# processes a spinning thread burns the time slice its partner needs, and the default job's iteration went
# from ~5 s to ~48 s with two competitors (issue #14; bench/results/threads_contention.md). Passive waiting
# must be chosen before libgomp loads, i.e. before torch is imported; the user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from eprl.training.cli import main  # noqa: E402  (absolute: `python -m training` in a checkout runs the same modules)

main()
