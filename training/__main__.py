# `eprl.training.cli.main` sets the OpenMP wait policy before torch loads (passive_openmp_default), so the
# console script `eprl` and `python -m eprl.training` start the same way.
from eprl.training.cli import main  # absolute: `python -m training` in a checkout runs the same modules

main()
