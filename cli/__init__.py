"""The `xai-graph` command line (`xai_graph.cli.main`; this folder installs as `xai_graph.cli`).

Importing the library takes a moment (onnx, OpenCV, the runtimes); a Ctrl-C or SIGTERM in that
moment must not print an import traceback. Nothing is written before the command starts, so
until `main` installs its own handlers, such a signal just ends the process with 130.
"""

import os
import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:
    sys.stderr.write("interrupted\n")
    os._exit(130)


for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    if signal.getsignal(_signum) is not signal.SIG_IGN:  # keep an ignore set by the parent (nohup, background jobs)
        signal.signal(_signum, _interrupted_while_starting)
