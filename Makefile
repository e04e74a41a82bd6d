# One task runner, the same verbs the README uses.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the dependencies change; a warm `make install` is a file-date check.
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
WORKERS ?= 1
POOL_MAX ?= 16
SOURCES := gateway adapters tests benchmarks loadtest
BENCH := $(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-storage=file://./.benchmarks -q

.PHONY: cluster cluster-down demo differential stateful fuzz install run test test-subject check lint lint-docker typecheck promtool unit integration system-deps bench bench-baseline bench-compare bench-http bench-adversity bench-cluster bench-reload bench-write-replay bench-replay bench-soak profile loadtest loadtest-rush loadtest-degraded clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Beijing time unless TZ says otherwise: settlement days, date checks and the interface's times
# are Beijing's (CST-8 needs no zone files). POOL_MAX: connections each worker holds.
run: install
	TZ="$${TZ:-CST-8}" $(BIN)/python -m gateway serve --host $(HOST) --port $(PORT) --workers $(WORKERS) --pool-max $(POOL_MAX)

# The three demo flows, signed with the demo credentials, against `make run` in another terminal,
# in the same time zone as `make run` (a HIS sends Beijing time, whatever its machine's zone).
demo: install
	TZ="$${TZ:-CST-8}" $(BIN)/python -m gateway demo visit --url http://$(HOST):$(PORT)
	TZ="$${TZ:-CST-8}" $(BIN)/python -m gateway demo stay --url http://$(HOST):$(PORT)
	TZ="$${TZ:-CST-8}" $(BIN)/python -m gateway demo pharmacy --url http://$(HOST):$(PORT)

system-deps:
	./scripts/system-deps.sh

# One ledger region group's high-availability shape on loopback (docs/deployment.md): etcd, three
# Patroni members, HAProxy, Redis with a replica and Sentinel, two gateway nodes. Prints where
# everything listens; `make cluster-down` stops it all and removes its data.
cluster: install system-deps
	$(BIN)/python scripts/cluster/loopback.py up

cluster-down:
	$(BIN)/python scripts/cluster/loopback.py down

lint: install
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: install
	$(BIN)/mypy

lint-docker: install
	$(BIN)/hadolint Dockerfile

check: lint typecheck lint-docker

# The benchmarks run once each, untimed (--benchmark-disable in pyproject), so they cannot rot.
test: install system-deps check promtool
	$(BIN)/python -m pytest tests benchmarks

# Alerting rules: syntax and their unit tests. Optional like every system tool (see system-deps).
promtool: system-deps
	@command -v promtool >/dev/null || { echo "warning: no promtool; alerting rules not checked" >&2; exit 0; }; \
	promtool check rules config/prometheus/rules/*.yml && promtool test rules config/prometheus/tests/*.yml

unit: install
	$(BIN)/python -m pytest tests/unit benchmarks -q

integration: install system-deps
	$(BIN)/python -m pytest tests/integration -q

# Everything about one transaction or kind of visit, wherever its tests sit (tests/subjects.py):
# `make test-subject S=2207`, `make test-subject S=pharmacy`.
test-subject: install system-deps
	$(BIN)/python -m pytest tests -q -m "$(if $(filter-out outpatient inpatient pharmacy,$(S)),tx$(S),$(S))"

bench: install
	$(BENCH) --benchmark-autosave --benchmark-columns=min,median,mean,ops

# The baseline is committed (benchmarks/baseline/): `make bench-baseline` records this machine's
# run as the new one; `make bench-compare` fails on a median 25% slower than it. Same machine
# only: the figures are absolute times.
BASELINE := --benchmark-storage=file://./benchmarks/baseline
bench-baseline: install
	$(BIN)/python -m pytest benchmarks --benchmark-enable $(BASELINE) --benchmark-save=baseline -q

bench-compare: install
	$(BIN)/python -m pytest benchmarks --benchmark-enable $(BASELINE) --benchmark-compare \
		--benchmark-compare-fail=median:25% --benchmark-columns=min,median,mean,ops -q

# The HTTP harness: the bare ceiling and every gateway scenario in one run (benchmarks/RESULTS.md).
bench-http: install
	$(BIN)/python benchmarks/http_harness.py --duration 8 --concurrency 64 --results benchmarks/RESULTS.md

# The same scenarios driven by wrk (C; Lua scripts in benchmarks/wrk/) instead of a Python
# generator whose own CPU was the ceiling: rates, p50/p99, CPU per answer of gateway, PostgreSQL
# and wrk, ratios to the bare ceiling measured just before each row (--bare-each), and a latency
# sweep by connections.
.PHONY: bench-wrk
bench-wrk: install system-deps
	$(BIN)/python benchmarks/wrk_harness.py --duration 8 --connections 64 --bare-each 3 --also-workers 2 --results benchmarks/RESULTS.md

# Durable 2102 through HAProxy to the loopback cluster's two gateway nodes and to one (the other
# killed), in ABBA order: answers/s, p50/p99, CPU per answer of the nodes and every PostgreSQL.
bench-cluster: install system-deps
	$(BIN)/python benchmarks/cluster_nodes.py --duration 10 --connections 64 --results benchmarks/RESULTS.md

# Pharmacy load at half of saturation, quiet and attacked rounds in turn (9101 bombs, a console
# log-in flood, unsigned 4 MB bodies): other institutions' p99 within 10%, no breaker open.
bench-adversity: install
	$(BIN)/python benchmarks/adversity_load.py --duration 30 --rounds 4 --rate 100 --results benchmarks/RESULTS.md

# The same run with py-spy on the gateway per scenario: var/profiles/<scenario>.txt.
profile: install
	$(BIN)/python benchmarks/http_harness.py --duration 8 --concurrency 64 --profile var/profiles

# A group commit's write replayed against copies of one ledger, alternating batch by batch:
# PostgreSQL's CPU a settlement, exactly enough to show a schema change (benchmarks/RESULTS.md).
bench-write-replay: install system-deps
	$(BIN)/python benchmarks/write_replay.py --seconds 8 --rounds 4 \
	  --variant "pglz=ALTER TABLE settlements ALTER COLUMN lines SET COMPRESSION pglz"

# An outage's backlog of deferred claims replayed (`deferred replay`), at two sizes on one ledger.
bench-replay: install system-deps
	$(BIN)/python benchmarks/replay_rate.py --fill 4,12

# P7/P8: a reload of 500,000 mappings against the event loop, and the memory it takes.
bench-reload: install
	$(BIN)/python benchmarks/catalog_reload.py --mappings 500000 --reloads 5

# P8: one worker's memory through a 10-minute soak of durable settlements.
bench-soak: install
	$(BIN)/python benchmarks/soak.py --minutes 10 --rate 400

# Locust against `make run` (another terminal; `python -m gateway demo synth --persons 20000`
# spreads the load): the full mix, the rush-hour shape, and the mix under the plan's `defer`.
loadtest: install
	mkdir -p var/locust
	SGW_SYNTH_PERSONS=$${SGW_SYNTH_PERSONS:-20000} $(BIN)/locust --config loadtest/locust.conf \
		--host http://$(HOST):$(PORT)

loadtest-rush: install
	mkdir -p var/locust
	SGW_SYNTH_PERSONS=$${SGW_SYNTH_PERSONS:-20000} $(BIN)/locust --config loadtest/locust.conf \
		--host http://$(HOST):$(PORT) -f loadtest/locustfile.py,loadtest/shapes.py --csv var/locust/rush

loadtest-degraded: install
	mkdir -p var/locust
	$(BIN)/python -m gateway plan set --scope global --class settlement --action defer \
		--reason "load test: degraded mode"
	SGW_SYNTH_PERSONS=$${SGW_SYNTH_PERSONS:-20000} $(BIN)/locust --config loadtest/locust.conf \
		--host http://$(HOST):$(PORT) --run-time $${LOCUST_RUN_TIME:-2m} --csv var/locust/degraded \
		PharmacyCounter; status=$$?; \
	$(BIN)/python -m gateway plan clear --scope global --class settlement \
		--reason "load test over"; exit $$status

# Keeps var/ (the embedded database of `make run`) and .benchmarks/ (the saved baselines).
fuzz: install
	FUZZ_EXAMPLES=100000 $(BIN)/python -m pytest tests/fuzz -q --timeout 0

# Random visits against a real gateway, every amount compared with the reference model
# (tests/reference/); `make differential N=20000 SEED=7`. No SEED: one is drawn and printed.
differential: N ?= 2000
differential: install
	DIFFERENTIAL_N=$(N) DIFFERENTIAL_SEED=$(SEED) $(BIN)/python -m pytest tests/reference/test_differential.py -q -s --timeout 0 -p no:cacheprovider

# Random sequences of uploads, settlements, cancellations, reversals and dates against a real
# gateway; after every step the ledger checker's money invariants with the reference model as the
# rules (tests/stateful/). `make stateful N=500 SEED=7`; no SEED: one is drawn and printed.
stateful: N ?= 500
stateful: install
	STATEFUL_N=$(N) STATEFUL_SEED=$(SEED) $(BIN)/python -m pytest tests/stateful/test_money_machine.py -q -s -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info build dist
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
