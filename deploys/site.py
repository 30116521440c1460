"""Converge the whole fleet: every host gets the components that apply to it, in order.

    pyinfra inventory.py deploys/site.py               # every host
    pyinfra inventory.py deploys/site.py --limit llm   # one group

The components and their order come from the registry (fleet.converge.component): each
module in deploys/ declares which hosts it applies to and what it runs after.
"""

from pyinfra import host

from fleet.converge.component import components

for component in components():
    if component.applies(host.groups, host.data):
        component.deploy()
