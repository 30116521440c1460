"""pyinfra's own command line, SIGKILLed by itself the moment a named operation starts.

    python tests/harness/killpoint.py "Docker | Enable docker" -y inventory.py deploys/site.py ...

The fault suite's interrupted runs (testfleet.converge(kill_before=...)). Killing pyinfra from
outside when it prints "Starting operation: X" races X itself: pyinfra sends X's first command
right after printing the line, and a loaded machine can run it before the reader's SIGKILL
lands (CI once saw docker restarted with its new daemon.json by the run that was meant to die
before that restart, so the scenario tested nothing). Here the SIGKILL is sent from pyinfra's
operation_start callback, which pyinfra runs before it sends any of X to any host: the run
dies exactly between the operation before X and X, every time.

pyinfra's command line builds its State itself, so the callback is added as each State is
initialised; nothing else of pyinfra is changed. pyinfra is imported in main() only, so the harness
can read KILLED without gevent's monkey-patching.
"""

from __future__ import annotations

import os
import signal
import sys

KILLED = "--> killpoint: SIGKILL before"  # the line that tells the harness the kill was this one


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: killpoint.py OPERATION-NAME PYINFRA-ARGS...")
    name = sys.argv.pop(1)
    import pyinfra_cli  # noqa: F401  (first, as pyinfra's own entry point: gevent's monkey.patch_all)
    from pyinfra.api.state import BaseStateCallback, State
    from pyinfra_cli.main import main as pyinfra_main

    class KillBefore(BaseStateCallback):
        def operation_start(self, state, op_hash):  # pyinfra calls it bound, with the state
            if name in state.get_op_meta(op_hash).names:
                print(f"{KILLED} {name!r}", flush=True)
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    made = State.init  # where a State gets its callback handlers list

    def init(self, *args, **kwargs):
        made(self, *args, **kwargs)
        self.add_callback_handler(KillBefore())

    State.init = init
    sys.argv[0] = "pyinfra"
    sys.exit(pyinfra_main())


if __name__ == "__main__":
    main()
