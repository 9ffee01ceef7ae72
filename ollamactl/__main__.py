"""``python3 -m ollamactl``."""

from ollamactl.cli import main

raise SystemExit(main())
