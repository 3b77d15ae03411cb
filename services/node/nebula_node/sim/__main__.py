"""``python -m nebula_node.sim`` is ``nebula-sim``."""

from .main import main

main()
