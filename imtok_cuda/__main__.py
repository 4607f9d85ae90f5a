"""python -m imtok_cuda: what was built and what is running (same as `imtok info`)."""
from .info import main

main()
