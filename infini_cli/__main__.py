"""``python -m infini_cli`` = the ``infini-export`` command."""
from .main import main

raise SystemExit(main())
