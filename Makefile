# hotmesh: set up, lint and test. `make help` lists the targets.
#
# Every target that needs a database runs inside `hotmesh db run`: with DATABASE_URL set in the
# environment that is used as is; otherwise a private cluster on a Unix socket in $(PGDIR) is
# started for the duration of the command (and stopped afterwards if it was not running).

SHELL := /bin/bash
.SHELLFLAGS := -e -o pipefail -c
.DEFAULT_GOAL := help

# Bytecode caches (__pycache__, git-ignored) are written even where the environment says not to
# (PYTHONDONTWRITEBYTECODE, set on this project's machines): `make test` starts hundreds of
# Python processes (CLI commands, workers, pytest phases), and without the caches each one
# compiles hotmesh again (`hotmesh list`: 1.07 s, not 1.59 s) and each pytest process rewrites
# every test module again (collecting the tests: 2.1 s of CPU, not 4.9 s).
unexport PYTHONDONTWRITEBYTECODE

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HM := $(BIN)/hotmesh
STAMP := $(VENV)/.hotmesh.stamp
PG_MAJOR ?= 15
# Schema the SQL tests and plpgsql_check work on (installed with `hotmesh migrate --app $(APP)`).
APP ?= hm_test
# Same default as `hotmesh db`: $HOTMESH_PGDIR, else /tmp/hotmesh-pg-<8 hex of sha1(checkout)>.
ifndef PGDIR
PGDIR := $(or $(HOTMESH_PGDIR),/tmp/hotmesh-pg-$(shell printf %s "$(CURDIR)" | sha1sum | cut -c1-8))
endif
DB_RUN = $(HM) db run --dir "$(PGDIR)"
SUBMAKE = $(MAKE) --no-print-directory
PROVE_FILES ?= tests/sql
PYTEST_ARGS ?=
# pytest-xdist workers for the first phase of `make pytest`. The tests mostly wait (worker
# processes, polls, NOTIFY). On a shared 2-core machine (load 4-8) pytest took 429 s serially,
# 164 s with -n 2, 218-228 s with -n 3, 181 s with -n 4: the noise is larger than the
# difference, and 2 leaves timing-sensitive tests the most CPU.
PYTEST_N ?= 2

.PHONY: help setup sysdeps db-up db-down db-url lint lint-static lint-sql lint-ruff \
	lint-format lint-mypy lint-plpgsql sqltest pytest test test-slow test-citus demo bench clean \
	_migrate _prove _pytest _dbtest schema demo-agent

help:
	@echo "make setup     system packages (PostgreSQL $(PG_MAJOR), pgTAP, pg_prove, plpgsql_check) + $(VENV)"
	@echo "make test      lint + sqltest + pytest against one throwaway cluster (--fast)"
	@echo "make test-slow the slow reliability tests (pytest -m slow: 10,000-workflow load, ...)"
	@echo "make test-citus the Citus tests on a coordinator + 2 workers (docs/citus.md)"
	@echo "make lint      sqlfluff, ruff check, ruff format --check, mypy, plpgsql_check"
	@echo "make sqltest   hotmesh migrate --app $(APP), then pg_prove --ext .sql -r tests/sql"
	@echo "make pytest    $(BIN)/pytest -q: the serial tests alone, then the rest -n $(PYTEST_N) (PYTEST_ARGS=...)"
	@echo "make schema    rewrite tests/schema.sql, the snapshot of a fresh app schema (docs/schema.md)"
	@echo "make demo | demo-agent | bench"
	@echo "make db-up     start the private cluster; eval \"\$$(make -s db-up)\" to use it"
	@echo "make db-down | db-url | clean"
	@echo "private cluster: $(PGDIR)   (DATABASE_URL in the environment overrides it)"

# ------------------------------------------------------------------------------ setup

# chromium (and a font for it): the browser tests of `hotmesh ui` (tests/test_ui.py) drive it
# with Playwright, which cannot download its own browser here.
setup: sysdeps $(STAMP)

# Installs only what is missing; needs root for that (otherwise prints the command and fails).
sysdeps:
	@missing=""; \
	ext=/usr/share/postgresql/$(PG_MAJOR)/extension; \
	[ -x /usr/lib/postgresql/$(PG_MAJOR)/bin/initdb ] || missing="$$missing postgresql-$(PG_MAJOR)"; \
	[ -f $$ext/pg_stat_statements.control ] || missing="$$missing postgresql-contrib"; \
	[ -f $$ext/pgtap.control ] || missing="$$missing postgresql-$(PG_MAJOR)-pgtap"; \
	command -v pg_prove >/dev/null || missing="$$missing libtap-parser-sourcehandler-pgtap-perl"; \
	[ -f $$ext/plpgsql_check.control ] || missing="$$missing postgresql-$(PG_MAJOR)-plpgsql-check"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -d /usr/share/fonts/truetype/dejavu ] || missing="$$missing fonts-dejavu-core"; \
	[ -z "$$missing" ] && exit 0; \
	install="DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends$$missing"; \
	if [ "$$(id -u)" -ne 0 ]; then \
		echo "missing system packages:$$missing" >&2; \
		echo "install them as root:  apt-get update && $$install" >&2; \
		exit 1; \
	fi; \
	echo "installing:$$missing"; \
	apt-get update; \
	eval "$$install"

# The venv is (re)installed only when pyproject.toml changes; the install is editable, so source
# changes need nothing. pip installs uv, uv installs the rest: the same versions as
# `pip install -e '.[dev]'`, which spent 92 s resolving (reading every release of ~60
# packages' indexes) and 32 s installing, 123 s of a fresh clone's `make test`; uv takes 5-10 s.
# The venv starts without pip: ensurepip byte-compiles all of pip, 5 s of CPU (125 s at load 19)
# of a fresh clone's `make test`; $(PYTHON)'s own pip (>= 22.3: --python) installs uv into it
# (ensurepip only where there is none), and uv installs pip with the rest (0.2 s):
# tests/test_packaging.py builds the wheel with it.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "$(PYTHON) is older than Python 3.11 (set PYTHON=...)" >&2; exit 1; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv --without-pip $(VENV)
	if $(PYTHON) -m pip --python $(BIN)/python --version >/dev/null 2>&1; then \
		pip="$(PYTHON) -m pip --python $(BIN)/python"; \
	else \
		$(BIN)/python -m ensurepip --default-pip >/dev/null; pip="$(BIN)/python -m pip"; \
	fi; \
	$$pip install --quiet --disable-pip-version-check 'uv>=0.9'
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]' pip
	touch $@

# ------------------------------------------------------------------------------ private cluster

db-up: setup
	$(HM) db up --dir "$(PGDIR)"

db-down: setup
	$(HM) db down --dir "$(PGDIR)"

db-url: setup
	@$(HM) db url --dir "$(PGDIR)"

# ------------------------------------------------------------------------------ lint

lint: lint-static lint-plpgsql

lint-static: lint-sql lint-ruff lint-format lint-mypy

# The pgTAP files name the schema under test through the psql variable `app` (_preamble.psql),
# never as hm_test: `make sqltest APP=other` must test schema other.
lint-sql: setup
	@if grep -n hm_test tests/sql/*.sql; then \
		echo 'tests/sql: name the app schema through the psql variable app, not hm_test' >&2; \
		exit 1; \
	fi
	$(BIN)/sqlfluff lint --disable-progress-bar sql migrations tests/sql

lint-ruff: setup
	$(BIN)/ruff check python tests

lint-format: setup
	$(BIN)/ruff format --check python tests

lint-mypy: setup
	$(BIN)/mypy

# plpgsql_check over every PL/pgSQL function of schema $(APP): tests/sql/00_plpgsql_check.sql.
lint-plpgsql: setup
	$(DB_RUN) --fast -- $(SUBMAKE) _prove PROVE_FILES=tests/sql/00_plpgsql_check.sql

# ------------------------------------------------------------------------------ tests

sqltest: setup
	$(DB_RUN) --fast -- $(SUBMAKE) _prove

pytest: setup
	$(DB_RUN) --fast -- $(SUBMAKE) _pytest

# One cluster for everything. sqltest runs all of tests/sql, 00_plpgsql_check.sql included, so
# lint-static + sqltest + pytest covers `make lint` without checking the functions twice.
# -k: run every step, fail at the end if any failed. -j 2: the static lint (CPU: sqlfluff,
# mypy) runs while the database tests mostly wait; -O keeps each step's output together.
test: setup
	$(DB_RUN) --fast -- $(SUBMAKE) -k -j 2 --output-sync=target lint-static _dbtest

# The committed snapshot of a fresh app schema; tests/test_schema.py (in `make test`) fails
# when it is out of date.
schema: setup
	$(DB_RUN) --fast -- $(BIN)/python tests/schema_snapshot.py

# The tests marked `slow` (pyproject.toml deselects them by default): the 10,000-workflow load,
# a database restart and a terminate storm under 1,000 workflows, ... Same throwaway cluster
# (--fast keeps synchronous_commit on: an immediate restart loses nothing committed).
test-slow: setup
	$(DB_RUN) --fast -- $(BIN)/pytest -q -m slow $(PYTEST_ARGS)

# Internal: run inside `hotmesh db run`, i.e. with DATABASE_URL set. _prove depends on _migrate
# so that, even under `make -k`, no test runs against a schema that failed to install.
# The tests run against a fresh install of $(APP): a schema left by an earlier run is dropped.
_migrate:
	psql "$$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 -c 'set client_min_messages = warning' \
		-c 'drop schema if exists $(APP) cascade'
	$(HM) migrate --app $(APP)

# pg_prove cannot take a URL (it mangles `--dbname` values containing `=`): `hotmesh db env`
# turns DATABASE_URL into PG* variables. The extensions are created once here, so test files
# may `create extension if not exists` without racing under `pg_prove -j`.
_prove: _migrate
	exports="$$($(HM) db env)"; eval "$$exports"; \
	psql -X -q -v ON_ERROR_STOP=1 -c 'set client_min_messages = warning' \
		-c 'create extension if not exists pgtap' \
		-c 'create extension if not exists plpgsql_check'; \
	pg_prove --ext .sql -r --set app=$(APP) $(PROVE_FILES)

# sqltest, then pytest; both run, and it fails if either failed. Not side by side: pytest's
# serial phase restarts the cluster.
_dbtest:
	rc=0; $(SUBMAKE) _prove || rc=$$?; $(SUBMAKE) _pytest || rc=$$?; exit $$rc

# Two phases, both run; fails if either failed. 1: the `serial` tests (a cluster restart, ...),
# with nothing beside them in the cluster. 2: every other test, side by side on $(PYTEST_N)
# pytest-xdist workers (each with its own template database; loadgroup keeps an xdist_group on
# one worker). The serial tests come first: they leave a core idle (14 s of CPU in some 30 s),
# which in `make test` the static lint (sqlfluff, mypy: 30 s of CPU) fills, where it used to
# take its share of the second phase's two busy cores. pytest exits 5 when a phase selects no
# test (PYTEST_ARGS=-k ...): not a failure.
_pytest:
	rc=0; \
	$(BIN)/pytest -q -m 'not slow and serial' $(PYTEST_ARGS) || { s=$$?; [ $$s -eq 5 ] || rc=$$s; }; \
	$(BIN)/pytest -q -n $(PYTEST_N) --dist loadgroup -m 'not slow and not serial' $(PYTEST_ARGS) \
		|| { s=$$?; [ $$s -eq 5 ] || rc=$$s; }; \
	exit $$rc

# hotmesh on Citus (docs/citus.md): a coordinator and two workers on loopback (tests/citus_cluster.py:
# Citus as installed, else built from $(CITUS_SRC) with headers pinned to the server's version),
# the tests marked `citus`, then the nodes stop. Not part of `make test`.
CITUS_SRC ?= $(abspath $(CURDIR)/../shared/vendor/citus-13.2.2.tar.gz)
test-citus: setup
	CITUS_SRC="$(CITUS_SRC)" $(BIN)/python tests/citus_cluster.py run -- \
		$(BIN)/pytest -q -p no:randomly -m citus tests/test_citus.py $(PYTEST_ARGS)

# ------------------------------------------------------------------------------ demo, bench

# The demo's data stays in the private cluster: the last line says how to look at it.
demo: setup
	$(DB_RUN) -- $(BIN)/python python/examples/demo.py
	@echo 'the dashboard on this data:  eval "$$(make -s db-up)" && $(HM) ui --app my_app --allow-actions   (then open http://127.0.0.1:8700/)'

# The durable AI agent (docs/agents.md): the offline model unless HOTMESH_AGENT_BASE_URL is set.
demo-agent: setup
	$(DB_RUN) -- $(BIN)/python python/examples/research_agent.py

# The private cluster preloads pg_stat_statements; the extension makes bench count statements.
bench: setup
	$(DB_RUN) -- sh -c 'psql -X -q -c "create extension if not exists pg_stat_statements" && $(HM) bench'

# ------------------------------------------------------------------------------ clean

# Works without the venv (devtools/pgcluster.py run as a script needs only the standard
# library). If the server cannot be stopped, nothing is removed.
clean:
	$(PYTHON) python/hotmesh/devtools/pgcluster.py down --dir "$(PGDIR)"
	@if [ -e "$(PGDIR)/.hotmesh-db.lock" ] || [ -f "$(PGDIR)/data/PG_VERSION" ]; then \
		echo "rm -rf $(PGDIR)"; rm -rf "$(PGDIR)"; \
	elif [ -e "$(PGDIR)" ]; then \
		echo "not removing $(PGDIR): it does not look like a hotmesh cluster" >&2; \
	fi
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis dist build
