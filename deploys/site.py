"""Converge the whole fleet: every host gets what its groups need.

    pyinfra inventory.py deploys/site.py               # every host
    pyinfra inventory.py deploys/site.py --limit llm   # one group
"""

from deploys.base import base

base()
