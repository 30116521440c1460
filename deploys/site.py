"""Converge the whole fleet: every host gets the components that apply to it, in order.

    pyinfra inventory.py deploys/site.py               # every host
    pyinfra inventory.py deploys/site.py --limit llm   # one group
    FLEET_COMPONENTS=base,tailscale pyinfra inventory.py deploys/site.py   # those components only

The components and their order come from the registry (fleet.converge.component): each
module in deploys/ declares which hosts it applies to and what it runs after.
"""

from pyinfra import host

from fleet.converge.component import selected

# pyinfra identifies an operation by the line numbers of its call stack. Every component is
# called from the one line below, so two components' operations at the same line of their
# own modules would share an identity (and pyinfra's ordering DAG a cycle); host.loop()
# adds the component's place in the registry to it.
for component in host.loop(selected()):
    if component.applies(host.groups, host.data):
        component.deploy()
