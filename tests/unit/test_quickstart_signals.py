"""`vsbench quickstart` ends with 130 / 143 on Ctrl-C / SIGTERM even when the exception its signal
handler raises is swallowed where it lands (a finalizer, a library's `except BaseException`)."""

import io
import os
import signal
import time

import pytest
from rich.console import Console

import services.evaluator.quickstart.run as quickstart


def _swallowing_run(sig):
    def run(*_args):
        try:
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler runs here, in the main thread
        except BaseException:  # what a finalizer or a careless library does with it
            pass
        return ["the runs"]

    return run


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_swallowed_interrupt_still_ends_the_quickstart_with_its_status(sig, status, tmp_path, monkeypatch):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(quickstart, "_run", _swallowing_run(sig))
    started = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        quickstart.run_quickstart(tmp_path, console=Console(file=io.StringIO()))
    assert exited.value.code == status
    assert time.monotonic() - started < 4  # the handler cut the sleep short
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored


def test_without_a_signal_the_runs_come_back(tmp_path, monkeypatch):
    monkeypatch.setattr(quickstart, "_run", lambda *_args: ["the runs"])
    assert quickstart.run_quickstart(tmp_path, console=Console(file=io.StringIO())) == ["the runs"]
