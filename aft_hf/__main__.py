"""``python -m aft_hf ...`` and ``accelerate launch -m aft_hf ...`` run the CLI."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
