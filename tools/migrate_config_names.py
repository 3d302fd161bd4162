"""Rewrite stored model configs (JSON files) from the course's older field names to DeepseekV3Config's names.

    python tools/migrate_config_names.py FILE.json [FILE.json ...]        # rewrite in place
    python tools/migrate_config_names.py --check FILE.json ...            # only report; exit 1 if a file is old

Every dict key listed in course_lib.model.OLD_CONFIG_NAMES (d_model -> hidden_size, n_layers -> num_hidden_layers,
...) is renamed, in nested dicts too; key order, values and the file's indentation stay. Running it twice changes
nothing. Only pass files that hold course ModelConfig dicts: the renaming does not look at what a dict is for.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a clone without installing the package

from course_lib.model import OLD_CONFIG_NAMES, rename_old_config_names  # noqa: E402


def old_names_in(obj) -> list[str]:
    """The old names used as dict keys anywhere in obj."""
    if isinstance(obj, list):
        return [n for v in obj for n in old_names_in(v)]
    if not isinstance(obj, dict):
        return []
    return [k for k in obj if k in OLD_CONFIG_NAMES] + [n for v in obj.values() for n in old_names_in(v)]


def _indent(text: str) -> int | None:
    """The indentation json.dumps wrote the file with (None: all on one line)."""
    lines = text.splitlines()
    if len(lines) < 2:
        return None
    second = lines[1]
    return len(second) - len(second.lstrip(" "))


def migrate_text(text: str) -> str:
    """The JSON text with the old names renamed, formatted like the input."""
    new = json.dumps(rename_old_config_names(json.loads(text)), indent=_indent(text),
                     ensure_ascii=text.isascii())
    return new + ("\n" if text.endswith("\n") else "")


def migrate_file(path: str | Path, check: bool = False) -> list[str]:
    """Rewrite one file (unless check); returns the old names it held."""
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"path must be a .json file, got {str(path)!r}")
    text = path.read_text(encoding="utf-8")
    found = old_names_in(json.loads(text))
    if found and not check:
        path.write_text(migrate_text(text), encoding="utf-8")
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--check", action="store_true", help="report files with old names, change nothing")
    args = ap.parse_args(argv)
    stale = 0
    for f in args.files:
        found = migrate_file(f, check=args.check)
        stale += bool(found)
        verb = "has" if args.check else "renamed"
        print(f"{f}: {verb} {sorted(set(found))}" if found else f"{f}: already uses the new names")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
