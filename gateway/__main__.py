"""python -m gateway."""

import sys

# Under the guard: a reader process (gateway/jobs/reconcile.py, spawned) imports this module as
# its main one, and needs none of the application.
if __name__ == "__main__":
    from gateway.app.cli import main

    sys.exit(main())
