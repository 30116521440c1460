# The front door. `make help` lists every target.
SHELL := /bin/bash
# A failing command on the left of a pipe fails the recipe.
.SHELLFLAGS := -o pipefail -ec
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(abspath $(VENV)/bin)
STATE := .state
# Which fleet pyinfra and the specs target: fleet (real hosts) or test (Docker test fleet).
FLEET_TARGET ?= fleet
export FLEET_TARGET
PYTEST := $(PY) -m pytest -p no:cacheprovider -o testpaths= -rs
# Spec workers (pytest-xdist), fleet/commands/phase.py's SPEC_WORKERS (why 4 is there).
# SPEC_WORKERS=0 runs them in-process.
SPEC_WORKERS ?= 4

# What a target is given on the command line is checked before its command runs; a bad value
# stops make with one line (`Makefile:N: *** WHAT. Fix: HOW.  Stop.`).
# A yes/no switch (FORCE=1, DELETE=1, ...): 1, yes or true turn it on; 0, no, false or leaving
# it out keep it off; anything else is refused, so FORCE=0 or DELETE=no never means yes.
switch = $(if $(or $(word 2,$($(1))),$(filter-out 1 yes true 0 no false,$($(1)))),$(error $(1)=$($(1)) is not a \
	yes/no value. Fix: $(1)=1 to turn it on, or leave $(1) out),$(if $(filter 1 yes true,$($(1))),$(2)))
# SPEC_WORKERS: a whole number
digitless = $(strip $(subst 0,,$(subst 1,,$(subst 2,,$(subst 3,,$(subst 4,,$(subst 5,,$(subst 6,,$(subst 7,,$(subst 8,, \
	$(subst 9,,$(1))))))))))))
workers = $(if $(or $(word 2,$(SPEC_WORKERS)),$(call digitless,$(SPEC_WORKERS)),$(if $(SPEC_WORKERS),,none)),$(error \
	SPEC_WORKERS=$(SPEC_WORKERS) is not a number of spec workers. Fix: a whole number (SPEC_WORKERS=4; 0 runs \
	the specs in-process)),$(SPEC_WORKERS))

# A value given on the command line (HOST, APP, NAME, ...) as one shell word, single-quoted:
# a quote or a backquote in it reaches the command as text, never as shell.
arg = '$(subst ','\'',$($(1)))'
# LIMIT=hosts,groups: plan and converge give pyinfra one --limit per name (it takes one each),
# verify hands it to the specs (FLEET_SPEC_HOSTS), the phases to `phase --limit`. A name that is
# neither a host nor a group stops each of them with one line before any host is touched.
comma := ,
limits = $(foreach name,$(subst $(comma), ,$(LIMIT)),--limit '$(subst ','\'',$(name))')

.PHONY: help setup lock check plan converge verify llm-check backup restore backups rollback rebuild fleet-up fleet-down demo test unit faults bench docs phase1 phase2 phase3 phase4 vault-init vault-edit edge-plan edge-apply apikey tailnet-plan tailnet-apply test-arm64

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# pyinfra's CLI never writes bytecode (it sets sys.dont_write_bytecode), so each run compiled
# every module of fleet/ and deploys/ from source again: ~0.13 s of a no-op converge's CPU,
# ~0.1 s in each spec process (docs/performance.md). setup compiles them, as pip does for what
# it installs; "checked-hash": an import compares the source's hash with the one in its .pyc
# (not mtime and size), so an edited module is never run from an older .pyc.
setup: $(VENV)/.installed $(VENV)/bin/promtool ## create the virtualenv from the locked dependencies
	@$(PY) -m compileall -q --invalidation-mode checked-hash fleet deploys

# promtool, the same version the monitoring host runs (Debian's prometheus package), for the
# alert rules' unit tests; taken out of the package, which is not installed (no daemon here).
$(VENV)/bin/promtool: | $(VENV)/.installed
	rm -rf $(STATE)/promtool && mkdir -p $(STATE)/promtool
	cd $(STATE)/promtool && apt-get download -q=2 -o APT::Sandbox::User=root prometheus
	dpkg-deb --fsys-tarfile $(STATE)/promtool/prometheus_*.deb | tar -xO ./usr/bin/promtool > $@.tmp
	chmod 755 $@.tmp && mv $@.tmp $@ && rm -rf $(STATE)/promtool

lock: ## re-resolve requirements.lock from the pins in pyproject.toml
	rm -rf $(STATE)/lockenv && python3 -m venv $(STATE)/lockenv
	$(STATE)/lockenv/bin/pip install --quiet --disable-pip-version-check ".[test]"
	$(STATE)/lockenv/bin/pip freeze --exclude fleet > requirements.lock

check: setup ## validate inventory.py and group_data/ (no host is touched)
	$(PY) -m fleet check

plan: setup ## dry run: what would change on each host, nothing applied; LIMIT=hosts,groups
	$(BIN)/pyinfra -y --dry inventory.py deploys/site.py $(limits)

converge: setup ## converge every host (pyinfra inventory.py deploys/site.py); LIMIT=hosts,groups only those
	$(BIN)/pyinfra -y inventory.py deploys/site.py $(limits)

verify: setup ## run the testinfra specs against FLEET_TARGET (hosts in parallel: SPEC_WORKERS); LIMIT=hosts,groups
	$(if $(LIMIT),FLEET_SPEC_HOSTS=$(call arg,LIMIT) )$(PYTEST) -n $(workers) tests/specs

vault-init: setup ## create secrets/fleet.vault (asks a passphrase) and generate host keys
	FLEET_TARGET=fleet $(PY) -m fleet vault init
	FLEET_TARGET=fleet $(PY) -m fleet vault hostkeys

vault-edit: setup ## edit FLEET_TARGET's vault in $$EDITOR (decrypted only in a private temp file)
	$(PY) -m fleet vault edit

edge-plan: setup ## Cloudflare: show what edge-apply would change (tunnels, DNS, Workers/KV audit)
	$(PY) -m fleet edge plan

edge-apply: setup ## Cloudflare: apply the plan; DELETE=1 also deletes unlisted Workers/KV
	$(PY) -m fleet edge apply $(call switch,DELETE,--delete-unlisted)

apikey: setup ## a new API key for NAME (e.g. NAME=partner-x): printed once, only its SHA-256 stored in KV (AUTH)
	$(PY) -m fleet apikey create $(call arg,NAME)

tailnet-plan: setup ## Tailscale: diff the live tailnet policy against the one generated from the service graph
	$(PY) -m fleet tailnet plan

tailnet-apply: setup ## Tailscale: validate and write the generated policy; FORCE=1 replaces a console edit
	$(PY) -m fleet tailnet apply $(call switch,FORCE,--force)

llm-check: setup ## one chat completion on the llm host's endpoint; VIA=pi5-alpha sends it from that host
	$(PY) -m fleet llm-check $(if $(VIA),--via $(call arg,VIA),)

backup: setup ## one backup now on HOST (e.g. HOST=pi5-gamma); prints the snapshot
	$(PY) -m fleet backup $(call arg,HOST)

# restore replaces the live databases only when told CONFIRM=yes, the word itself
confirm = $(if $(CONFIRM),$(if $(or $(word 2,$(CONFIRM)),$(filter-out yes,$(CONFIRM))),$(error CONFIRM=$(CONFIRM) is \
	not yes. Fix: CONFIRM=yes to replace the live databases, or leave CONFIRM out to restore beside them),--confirm))
restore: setup ## restore HOST [SNAPSHOT=id] [DATABASE=name] into a side cluster; CONFIRM=yes replaces the live one
	$(PY) -m fleet restore $(call arg,HOST) $(if $(SNAPSHOT),--snapshot $(call arg,SNAPSHOT),) \
		$(if $(DATABASE),--database $(call arg,DATABASE),) $(confirm)

rollback: setup ## switch APP (e.g. APP=web) back to its previous image through the health gate; HOST=... only there
	$(PY) -m fleet rollback $(call arg,APP) $(if $(HOST),--host $(call arg,HOST),)

rebuild: setup ## a freshly flashed HOST back to its full role and data (refuses a healthy host unless FORCE=1)
	$(PY) -m fleet rebuild $(call arg,HOST) $(call switch,FORCE,--force)

backups: setup ## every backed-up host's snapshots: count, latest, age, size
	$(PY) -m fleet backups

fleet-up: setup ## start the Docker test fleet (installs/starts Docker, builds the image)
	$(PY) tests/harness/testfleet.py up

fleet-down: setup ## remove the Docker test fleet
	$(PY) tests/harness/testfleet.py down

demo: FLEET_TARGET = test
# The demo runs `make setup` itself, beside the base image's build (tests/harness/demo.py).
demo: ## the whole fleet as local Docker test hosts: up, converge, verify, summary (each stage timed)
	python3 tests/harness/demo.py $(VENV)

unit: setup ## unit tests only (no Docker): the product's, then the test stand-ins' own
	mkdir -p $(STATE)
	$(PYTEST) --junitxml=$(STATE)/junit-unit.xml tests/unit
	$(PYTEST) --junitxml=$(STATE)/junit-standins.xml tests/standins

test: setup ## unit tests, then molecule test (test fleet: converge, idempotence, specs, integration, faults)
	rm -f $(STATE)/junit-*.xml
	$(MAKE) --no-print-directory unit
	PATH="$(BIN):$$PATH" $(BIN)/molecule test
	@$(PY) tests/report.py "product unit=$(STATE)/junit-unit.xml" "stand-in unit=$(STATE)/junit-standins.xml" \
		"specs=$(STATE)/junit-specs.xml" "integration=$(STATE)/junit-integration.xml" "faults=$(STATE)/junit-faults.xml"

faults: setup ## the fault suite on the test fleet: inject, converge, a rerun recovers, then no change
	mkdir -p $(STATE)
	$(PY) tests/harness/testfleet.py up
	$(PY) tests/harness/testfleet.py converge
	$(PY) tests/faults/run.py --junit $(STATE)/junit-faults.xml

docs: setup ## regenerate docs/settings.md, docs/fleet.md and docs/runbook.md from the data
	$(PY) -m fleet docs

# The guide's setup checklist, one phase at a time (fleet/checklist.py): converge what the
# phase needs, then one line per item. LIMIT=hosts,groups; CHECK_ONLY=1 verifies only.
PHASE_ARGS = $(if $(LIMIT),--limit $(call arg,LIMIT),) $(call switch,CHECK_ONLY,--check-only) --workers $(workers)
phase1: setup ## checklist phase 1 (Foundation): converge, verify each item; LIMIT=..., CHECK_ONLY=1
	$(PY) -m fleet phase 1 $(PHASE_ARGS)
phase2: setup ## checklist phase 2 (Services)
	$(PY) -m fleet phase 2 $(PHASE_ARGS)
phase3: setup ## checklist phase 3 (Hardening)
	$(PY) -m fleet phase 3 $(PHASE_ARGS)
phase4: setup ## checklist phase 4 (Cleanup)
	$(PY) -m fleet phase 4 $(PHASE_ARGS)

bench: setup ## time the floor, no-op converges (site, base, per host), specs -> bench.json (FRESH=1: fleet-up + first converge too)
	$(PY) tests/harness/bench.py --out bench.json $(call switch,FRESH,--fresh)

test-arm64: setup ## the rebuild test with pi5-gamma on arm64 under qemu-user (HOST=..., KEEP=1): not in make test (~40 min)
	$(PY) tests/harness/arm64.py $(if $(HOST),--host $(call arg,HOST),) $(call switch,KEEP,--keep)
