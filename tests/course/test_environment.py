"""environment.yml (conda) and pyproject.toml (pip) must ask for the same packages with the same lower bounds."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONDA_NAMES = {"pytorch": "torch"}   # conda package name -> PyPI name
CONDA_ONLY = {"python", "pip"}
PIP_ONLY_EXTRAS = {"site"}          # building the website (make site) is for maintainers, not the conda set-up

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = None


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(spec):
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", spec)
    return norm(CONDA_NAMES.get(m.group(1), m.group(1))), m.group(2).replace(" ", "")


def pyproject_deps():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    if tomllib is None:
        import pytest
        pytest.skip("needs Python >= 3.11 for tomllib")
    data = tomllib.loads(text)["project"]
    specs = list(data["dependencies"])
    for name, extra in data["optional-dependencies"].items():
        if name not in PIP_ONLY_EXTRAS:
            specs += extra
    return dict(parse(s) for s in specs)


def conda_deps():
    deps, section = {}, None
    for line in (ROOT / "environment.yml").read_text(encoding="utf-8").splitlines():
        if re.match(r"^\w", line):
            section = line.split(":")[0]
        if section != "dependencies":
            continue
        m = re.match(r"^  - ([^:\s][^:]*)$", line)
        if m:
            name, bound = parse(m.group(1))
            if name not in CONDA_ONLY:
                deps[name] = bound
    return deps


def test_environment_yml_matches_pyproject():
    py, conda = pyproject_deps(), conda_deps()
    assert py == conda, f"only in pyproject: {set(py.items()) - set(conda.items())}; only in environment.yml: " \
                        f"{set(conda.items()) - set(py.items())}"


def test_runtime_deps_have_lower_bounds_only():
    for name, bound in pyproject_deps().items():
        assert bound.startswith(">="), f"{name}{bound}: use lower bounds only (no == pins)"
    assert pyproject_deps()["ipywidgets"] == ">=7.7"   # Colab ships ipywidgets 7.7.1
