"""Write docs/configuration.md from the config dataclasses (run after changing a config field)."""

from pathlib import Path

from aft_hf.config_help import markdown_reference

if __name__ == "__main__":
    path = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    path.write_text(markdown_reference())
    print(f"wrote {path}")
