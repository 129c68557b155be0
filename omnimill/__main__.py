"""`python -m omnimill ...` (what torchrun runs: `torchrun --nproc_per_node 2 -m omnimill train ...`)."""

from omnimill.cli import main

main()
