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
