"""``python -m wheelbucket demo``: every kind of task gets the ending it was filled for."""

from __future__ import annotations

import pytest

from wheelbucket.__main__ import main


@pytest.mark.slow
def test_the_demo_checks_every_ending_and_explains_the_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--tasks", "3000"]) == 0
    out = capsys.readouterr().out
    for kind, ending in [
        ("quick", "FINISHED"),
        ("timer", "FINISHED"),
        ("drained", "DRAINED"),
        ("overrun", "EXHAUSTED"),
        ("fail", "FAILED"),
    ]:
        assert f"-> {ending}" in out
        assert any(line.split()[:1] == [kind] and "as planned" in line for line in out.splitlines())
    assert "demo OK" in out
    assert "workers_replaced" in out
    assert "lateness_p99" in out
