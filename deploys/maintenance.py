"""The failover droplet's maintenance page (failover group): a stdlib HTTP service bound
to the port map's `maintenance` address (127.0.0.1), answering every path with the page
(503, Retry-After) and /health with 200. The failover tunnel sends the wildcard domains
to it while the home network is down.
"""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from fleet.converge.component import Component
from fleet.converge.daemons import keep_running
from fleet.converge.render import render, source
from fleet.converge.services import ServiceMap

DEFAULTS = {
    # What the page says (HTML body text).
    "maintenance_message": "Systems temporarily offline. Back shortly.",
}

SCRIPT = "/usr/local/lib/fleet/maintenance-page"
UNIT = "/etc/systemd/system/maintenance-page.service"


@deploy("Maintenance page", data_defaults=DEFAULTS)
def maintenance():
    listen = ServiceMap.of_pyinfra(host).bind("maintenance", host.name)
    script = files.put(
        name="Install the maintenance page server",
        src=source("maintenance", "usr/local/lib/fleet/maintenance-page"),
        dest=SCRIPT,
        user="root", group="root", mode="755",
    )
    unit = files.put(
        name="Install the maintenance page unit",
        src=StringIO(render("etc/systemd/system/maintenance-page.service.j2", "maintenance",
                            script=SCRIPT, address=listen.address, port=listen.port,
                            message=host.data.maintenance_message)),
        dest=UNIT,
        user="root", group="root", mode="644",
    )
    keep_running("the maintenance page", "maintenance-page.service", inputs=[SCRIPT, UNIT], why="",
                 changed=(script, unit), unit_files=True, service="maintenance")


COMPONENT = Component(
    name="maintenance",
    deploy=maintenance,
    defaults=DEFAULTS,
    groups=("failover",),
    after=("tailscale",),
    before=("cloudflared",),  # the tunnel routes to it
)
