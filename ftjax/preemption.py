"""SIGTERM and SIGINT as a request to stop cleanly: preemptible TPUs and cloud GPUs send SIGTERM and give a
short grace period (30 s on GCP spot VMs, 2 min on AWS), and Ctrl-C sends SIGINT.

The first signal is only recorded (`StopSignals.received`); the loop reads it at the next step boundary,
saves a checkpoint there and stops (ftjax.errors.Stopped, exit status 75). Steps are dispatched
asynchronously and the host waits for the device only when it logs (every `log_every` steps), so that
boundary can be up to `log_every` steps of device time after the signal. A second signal ends the
process at once, killed by that signal, as if no handler were installed: orbax's write-then-rename keeps
the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
  """What the handlers saw: the name of the first stop signal, or None."""

  def __init__(self):
    self.received: str | None = None

  def handle(self, signum, frame) -> None:
    if self.received is not None:  # the second signal: die of it now
      for s in SIGNALS:
        signal.signal(s, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.received = signal.Signals(signum).name
    # os.write, not print: the handler may interrupt a print to stderr (the progress bar), and a second
    # write into the same buffered stream would raise "reentrant call"
    message = (
      f"\n{self.received} received: stopping after a checkpoint at the next step boundary "
      "(send it again to stop at once)\n"
    )
    os.write(2, message.encode())  # stderr


@contextlib.contextmanager
def stop_signals():
  """Handles SIGTERM and SIGINT as above for the block (restoring the previous handlers after it). Off the
  main thread, where Python cannot install handlers, the signals keep their usual effect."""
  stop = StopSignals()
  if threading.current_thread() is not threading.main_thread():
    yield stop
    return
  previous = {s: signal.signal(s, stop.handle) for s in SIGNALS}
  try:
    yield stop
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
