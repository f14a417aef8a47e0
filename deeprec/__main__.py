"""`python -m deeprec` is the `deeprec` command."""

from deeprec.cli import main

raise SystemExit(main())
