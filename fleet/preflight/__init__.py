"""Before any host is touched: target selection, the fleet model and validation.
Imports fleet.converge (the component registry), never fleet.commands."""
