"""`python -m autotrain.cli`: what `--nproc N` starts under mpiexec."""

from . import main

main()
