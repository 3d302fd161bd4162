"""course_lib: the tested helper package behind the Inside DeepSeek notebooks.

Each module holds one concept in its final, tested form; the notebooks build the same ideas
step by step and then reuse these versions.
"""
from pathlib import Path

__version__ = "0.1.0"

# Where the course's data lives. Installed from a clone (editable) this is the repository's assets/;
# installed from git (Colab) the assets are not packaged, so helpers that need them say so clearly.
ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"


def asset_path(*parts: str) -> Path:
    """Path of a file under assets/; a clear error when the course's data is not next to the package."""
    p = ASSETS.joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(
            f"course asset {'/'.join(parts)!r} not found at {p}; run the notebooks from a clone of the course "
            "repository (on Colab the setup cell clones it)")
    return p
