import pytest

from tests.conftest import require_binary


def test_present_binary_is_found() -> None:
    assert require_binary("sh").endswith("sh")


def test_missing_binary_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install no-such-pkg"):
        require_binary("definitely-not-installed-xyz", "no-such-pkg")


def test_missing_binary_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_binary("definitely-not-installed-xyz")
