"""course_lib.kit.versions: the one-line reason when transformers is missing or older than the course needs."""
import importlib.util

import pytest

from course_lib.kit import versions


@pytest.fixture
def installed(monkeypatch):
    """Pretend transformers of this version is installed (None: not installed)."""
    transformers = pytest.importorskip("transformers")

    def set_version(version):
        if version is None:
            real = importlib.util.find_spec
            monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers"
                                else real(name, *a))
        else:
            monkeypatch.setattr(transformers, "__version__", version)
    return set_version


@pytest.mark.parametrize("found,minimum,ok", [
    ("5.3.0", "5.24", False),          # numbers, not strings: 3 < 24 although "3" > "2"
    ("10.0", "5.24", True),            # and "10" > "5"
    ("5.24.0rc1", "5.24", True),       # a pre-release of the minimum counts as the minimum
    ("5.23.9", "5.24", False),
    ("5.24", "5.24.1", False),
    ("5.25.0", "5.24.0", True),
])
def test_versions_compare_as_numbers(installed, found, minimum, ok):
    installed(found)
    reason = versions.transformers_problem(minimum)
    assert (reason is None) == ok
    if not ok:
        assert reason == f"needs transformers >= {minimum} (found {found})"


def test_missing_transformers_is_named_and_the_default_minimum_is_the_ref_extra(installed):
    installed(None)
    assert versions.transformers_problem() == f"needs transformers >= {versions.MIN_TRANSFORMERS} (not installed)"
    assert versions.MIN_TRANSFORMERS == "5.24"


@pytest.mark.parametrize("bad", ["", "latest", "v5.24"])
def test_a_minimum_that_is_not_a_version_is_rejected(bad):
    with pytest.raises(ValueError, match="minimum") as err:
        versions.transformers_problem(bad)
    assert "\n" not in str(err.value)
