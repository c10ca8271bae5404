.PHONY: node_modules build lint test test-unit test-integration test-ha demo bench clean
# `make -j` must not reorder test: build, unit tests, then integration tests per PostgreSQL major.
.NOTPARALLEL:

# npm ci rewrites node_modules/.package-lock.json; it is redone when package-lock.json is newer.
node_modules: node_modules/.package-lock.json

node_modules/.package-lock.json: package-lock.json
	npm ci
	touch $@

build: node_modules
	npm run build

lint: node_modules
	npm run lint

test: build test-unit test-integration

test-unit: node_modules
	npx vitest run --project unit

test-integration: build
	PG_REKEY_TEST_PG_MAJOR=18 npx vitest run --project integration
	PG_REKEY_TEST_PG_MAJOR=14 npx vitest run --project integration

# Patroni + etcd + PostgreSQL 15 from Debian (packages patroni, etcd-server, postgresql-15; .ci/run installs them).
test-ha: build
	npx vitest run --project ha

demo: node_modules build
	node --import tsx demo/demo.ts

bench: node_modules build
	node --import tsx bench/load-spike/run.ts

clean:
	rm -rf dist .pg-rekey-test .demo-data .bench-data
