"""The one interrupt guard: a signal becomes KeyboardInterrupt at once, or at the end of a
shielded block, and is noted; ignored signals stay ignored when asked."""
import os
import signal

import pytest

from dfer_cli.interrupts import InterruptGuard


def test_a_signal_interrupts_at_once_and_is_noted():
    before = signal.getsignal(signal.SIGTERM)
    guard = InterruptGuard()
    with pytest.raises(KeyboardInterrupt), guard:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**6):                # the handler runs between bytecodes
            pass
    assert guard.seen and guard.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before                  # put back


def test_a_shielded_block_finishes_before_the_interrupt():
    done = []
    with InterruptGuard((signal.SIGINT,)) as guard:
        with pytest.raises(KeyboardInterrupt):
            with guard.shielded():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(10**5):
                    pass
                done.append("file and its record written")
        assert done == ["file and its record written"] and guard.seen


def test_only_over_default_leaves_an_ignored_signal_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with InterruptGuard((signal.SIGINT,), only_over_default=True) as guard:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10**5):
                pass
        assert not guard.seen
        with InterruptGuard((signal.SIGINT,)):                          # by default it takes over
            assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
