"""`python -m imtok ...` (what torchrun runs: torchrun --nproc_per_node N -m imtok train ...)."""
from .cli import main

main()
