"""deeprec.interrupts: Ctrl-C and SIGTERM held back during a tracking-store write."""

from __future__ import annotations

import os
import signal

import pytest

from deeprec import interrupts


def test_a_signal_inside_a_deferred_block_is_raised_when_the_block_ends() -> None:
    finished = []
    with interrupts.installed():
        with pytest.raises(KeyboardInterrupt, match=f"signal {int(signal.SIGTERM)}"):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                finished.append("the write")  # not cut short
        assert finished == ["the write"]
        with pytest.raises(KeyboardInterrupt):  # outside a block: at once
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the old handler is back


class _InterruptedWhileCollected:
    """Garbage collection runs `__del__` (and weakref callbacks) wherever the program is; Python
    prints and drops a KeyboardInterrupt raised inside one."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # pytest's report of the drop
def test_an_interrupt_python_dropped_is_raised_at_the_next_check() -> None:
    with interrupts.installed():
        interrupts.check()  # nothing received yet
        _InterruptedWhileCollected()  # collected at once: its KeyboardInterrupt is dropped, not raised here
        with pytest.raises(KeyboardInterrupt, match=f"signal {int(signal.SIGTERM)}"):
            interrupts.check()
    interrupts.check()  # forgotten once the handlers are uninstalled
