"""Entry point: python -m course_lib.bench <name> [args...]"""
import importlib
import pkgutil
import sys

import course_lib.bench as bench_pkg


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench_pkg.__path__) if m.name not in ("core", "__main__"))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m course_lib.bench <name> [options]\nbenchmarks: " + (", ".join(names) or "none yet"))
        return 0 if argv else 2
    name = argv[0]
    if name not in names:
        print(f"unknown benchmark {name!r}; available: {', '.join(names) or 'none yet'}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"course_lib.bench.{name}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
