"""``python -m attnexp.attention``: forwards to :mod:`attnexp.cli.zoo` (list, show, check)."""

from attnexp.cli.zoo import main

raise SystemExit(main())
