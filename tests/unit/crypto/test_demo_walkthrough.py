import pytest

from demo.crypto_walkthrough import main


def test_walkthrough_runs_and_shortens(capsys: pytest.CaptureFixture[str]) -> None:
    assert main() == 0
    out = capsys.readouterr().out
    assert "Status SUCCESS" in out and "EXPIRED_TOKEN" in out and "INVALID_PAYLOAD" in out
    # Nothing long enough to be a whole hash or token is printed.
    assert all(len(word) < 40 for word in out.split())
