"""The failover droplet's maintenance page (failover group): a stdlib HTTP service bound
to the port map's `maintenance` address (127.0.0.1), answering every path with the page
(503, Retry-After) and /health with 200. The failover tunnel sends the wildcard domains
to it while the home network is down.
"""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files
from pyinfra.operations.util import any_changed

from fleet.ops import keep_running
from fleet.render import render

DEFAULTS = {
    # What the page says (HTML body text).
    "maintenance_message": "Systems temporarily offline. Back shortly.",
}

SCRIPT = "/usr/local/lib/fleet/maintenance-page"
UNIT = "/etc/systemd/system/maintenance-page.service"


@deploy("Maintenance page", data_defaults=DEFAULTS)
def maintenance():
    svc = host.data.fleet_services["maintenance"]
    address = {"loopback": "127.0.0.1", "tailnet": host.data.tailnet_address}[svc["bind"][0]]
    script = files.put(
        name="Install the maintenance page server",
        src="files/usr/local/lib/fleet/maintenance-page",
        dest=SCRIPT,
        mode="755",
    )
    unit = files.put(
        name="Install the maintenance page unit",
        src=StringIO(render("etc/systemd/system/maintenance-page.service.j2", "maintenance",
                            script=SCRIPT, address=address, port=svc["port"],
                            message=host.data.maintenance_message)),
        dest=UNIT,
        mode="644",
    )
    keep_running("the maintenance page", "maintenance-page.service", any_changed(script, unit),
                 why="", unit_file=unit)
