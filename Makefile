# execbox: the two front-door commands are `make run` and `make test`. Both install what they
# need (Debian packages when root, uv and the Python runtime from PyPI) and are idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PREFIX      ?= /opt/execbox
PYTHON_ENV  ?= $(PREFIX)/python
UV_ENV      ?= $(PREFIX)/uv
UV          := $(UV_ENV)/bin/uv
BASE_PYTHON ?= /usr/bin/python3
REQS        := runtimes/python/requirements.txt
STAMP       := $(PYTHON_ENV)/.execbox-requirements-v2
CARGO       ?= cargo
EXECBOX     := target/release/execbox
APT_PKGS    := python3 python3-venv ca-certificates

.PHONY: help deps uv runtime runtimes examples-env build run demo test lint unit openapi-check k8s-env k8s-check k8s-docker-test vm-test image-bin image image-full docker-test docker-test-full stack-images stack-test check bench load-bench clean

help:
	@echo "make run     set up and start the service on 0.0.0.0:8080 (execbox serve)"
	@echo "make demo    set up and run examples/ through the sandbox (execbox run)"
	@echo "make test    set up and run fmt, clippy and every test (privileged ones need root)"
	@echo "make vm-test the cgroup v2 proof in a QEMU VM on Debian 12's kernel (vm/README.md)"
	@echo "make image   the light container image execbox:light (docker/Dockerfile; image-full: execbox:full)"
	@echo "make k8s-check  validate deploy/k8s (kubernetes-validate, checkov) and test it against the server"
	@echo "make stack-test  three replicas on Redis behind nginx/TLS (deploy/compose), failover tests"
	@echo "make bench   execbox run vs nsjail vs the bare interpreter (bench/README.md)"

## Debian packages (only when root and something is missing).
deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "missing Debian packages:$$missing (run as root or install them)"; exit 1; fi; \
	fi

## uv, from PyPI, in its own venv (Debian's pip refuses system installs).
uv: deps
	@test -x $(UV) || { $(BASE_PYTHON) -m venv $(UV_ENV) && $(UV_ENV)/bin/pip install -q uv; }

## The Python runtime: a venv over Debian's interpreter (reachable by the sandbox uid, unlike an
## interpreter under /root) with the pinned packages. Rebuilt when requirements.txt changes.
runtime: uv
	@if ! cmp -s $(REQS) $(STAMP); then \
	  echo "creating $(PYTHON_ENV)"; \
	  $(UV) venv -q --allow-existing --python $(BASE_PYTHON) $(PYTHON_ENV) && \
	  $(UV) pip install -q --compile-bytecode --python $(PYTHON_ENV)/bin/python -r $(REQS) && \
	  chmod -R a+rX,go-w $(PYTHON_ENV) && cp $(REQS) $(STAMP); \
	fi

## Every language's toolchain (the Debian packages of LANG_PKGS, when root; `make image-full`
## passes the same list to the full image), and the runtime packages copied to
## $(RUNTIMES_DIR), where `execbox serve` finds them (each is smoke-tested at start; one whose
## toolchain is absent is skipped).
RUNTIMES_DIR ?= $(PREFIX)/runtimes
LANG_PKGS := bash nodejs node-typescript ruby php-cli perl lua5.3 lua5.4 pypy3 gcc g++ g++-11 \
             rustc golang-go openjdk-17-jdk-headless gfortran fp-compiler tar
runtimes: runtime
	@missing=""; for p in $(LANG_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
	    for p in $$missing; do DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$p \
	      || echo "skipping $$p (cannot install; its runtime will not be offered)"; done; \
	  else echo "missing Debian packages:$$missing (run as root to install; those runtimes are skipped)"; fi; \
	fi
	@mkdir -p $(RUNTIMES_DIR) && cp -a runtimes/. $(RUNTIMES_DIR)/ && chmod -R a+rX,go-w $(RUNTIMES_DIR)

## The example live client's environment (examples/live/requirements.txt, from PyPI); the live
## suite (crates/execbox-cli/tests/live.rs) drives the example through the real server with it.
EXAMPLES_ENV ?= $(PREFIX)/examples
EXAMPLES_REQS := examples/live/requirements.txt
examples-env: uv
	@if ! cmp -s $(EXAMPLES_REQS) $(EXAMPLES_ENV)/.requirements; then \
	  echo "creating $(EXAMPLES_ENV)"; \
	  $(UV) venv -q --allow-existing --python $(BASE_PYTHON) $(EXAMPLES_ENV) && \
	  $(UV) pip install -q --python $(EXAMPLES_ENV)/bin/python -r $(EXAMPLES_REQS) && \
	  cp $(EXAMPLES_REQS) $(EXAMPLES_ENV)/.requirements; \
	fi

build:
	$(CARGO) build --release --workspace

## The service on its embedded defaults (0.0.0.0:8080; PORT or --listen to change). Auth stays
## on: without APP_JWT_SECRET a development secret is generated into .dev-jwt-secret.
run: runtime build
	$(EXECBOX) check
	@secret="$${APP_JWT_SECRET:-$$(cat .dev-jwt-secret 2>/dev/null)}"; \
	if [ -z "$$secret" ]; then \
	  secret="$$(head -c 32 /dev/urandom | base64 | tr -d '\n')"; \
	  (umask 077; echo "$$secret" > .dev-jwt-secret); \
	  echo "generated a development JWT secret in .dev-jwt-secret"; \
	fi; \
	echo "mint a token:  APP_JWT_SECRET=\"\$$(cat .dev-jwt-secret)\" $(EXECBOX) token --user-id dev"; \
	echo "then:          curl -H \"Authorization: Bearer \$$TOKEN\" localhost:8080/v1/user"; \
	APP_JWT_SECRET="$$secret" exec $(EXECBOX) serve $(SERVE_ARGS)

## The examples through the sandbox from the command line.
demo: runtime build
	$(EXECBOX) run examples/hello.py
	$(EXECBOX) run examples/pandas_report.py

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace -q

unit: runtime
	cd runtimes/python && $(PYTHON_ENV)/bin/python -m unittest -q test_harness

## The OpenAPI document the service serves, checked by an independent validator (PyPI).
openapi-check: uv
	@test -x $(UV_ENV)/bin/openapi-spec-validator || $(UV_ENV)/bin/pip install -q openapi-spec-validator
	$(CARGO) run -q -p execbox-cli -- openapi > target/openapi.json
	$(UV_ENV)/bin/openapi-spec-validator target/openapi.json

## The Kubernetes manifests (deploy/k8s, docs/kubernetes.md), offline after the first install:
## kubernetes-validate (strict, against K8S_VERSION's schemas) and checkov (manifests and
## docker/Dockerfile; every skip annotated with its reason) from a venv made once by uv, then
## the drift test: the real `execbox serve` started with the manifests' settings, in a network
## namespace of its own (their ports are fixed), answering the probes, the Service's port and
## the HPA's metric, and draining on SIGTERM within the pod's grace period.
K8S_ENV     ?= $(PREFIX)/k8s-check
K8S_REQS    := deploy/k8s/requirements-check.txt
K8S_STAMP   := $(K8S_ENV)/.execbox-requirements
K8S_VERSION ?= 1.32.0
k8s-env: uv
	@if ! cmp -s $(K8S_REQS) $(K8S_STAMP); then \
	  echo "creating $(K8S_ENV)"; \
	  $(UV) venv -q --allow-existing --python $(BASE_PYTHON) $(K8S_ENV) && \
	  $(UV) pip install -q --python $(K8S_ENV)/bin/python -r $(K8S_REQS) && \
	  cp $(K8S_REQS) $(K8S_STAMP); \
	fi

k8s-check: k8s-env runtime
	$(K8S_ENV)/bin/python deploy/k8s/check.py --kubernetes-version $(K8S_VERSION) --out target/k8s
	$(CARGO) build -q -p execbox-cli
	EXECBOX_BIN=target/debug/execbox unshare --net -- \
	  $(K8S_ENV)/bin/python -m unittest -v deploy/k8s/tests/test_drift.py

## The Deployment's pod spec under Docker: its capabilities, seccomp profile, no_new_privs,
## read-only root, emptyDirs and memory/CPU limits as `docker run` flags derived from
## deploy/k8s/base/deployment.yaml, on the light image; ready, a pandas run, every slot at its
## memory maximum at once without an OOM kill, docker stop drains (deploy/k8s/tests/test_pod_docker.py).
k8s-docker-test: k8s-env image
	$(CARGO) build -q -p execbox-cli
	EXECBOX_K8S_IMAGE=$(IMAGE):light EXECBOX_BIN=target/debug/execbox \
	  $(K8S_ENV)/bin/python -m unittest -v deploy/k8s/tests/test_pod_docker.py

## The cgroup v2 proof: Debian 12's own kernel in a QEMU VM (software emulation, no network),
## the real binary and jail inside it (vm/README.md). Kernel and initramfs are cached in
## /var/cache/execbox-vm (EXECBOX_VM_CACHE), so only the first run downloads anything.
vm-test: runtime
	EXECBOX_VM_TEST=1 $(CARGO) test -p execbox-cli --test vm -- --nocapture

## Container images (docker/Dockerfile). The binary is built here and copied in (no Rust
## image can be pulled); the base image the Dockerfile's FROM names is made from Debian's
## packages when the engine does not have it (docker/base-image.sh; no registry needed).
## Docker's layer cache makes a repeat run take seconds.
IMAGE_BASE  ?= debian:bookworm-slim
IMAGE       ?= execbox

image-bin: runtime
	$(CARGO) build --release -p execbox-cli -p execbox-jail
	@mkdir -p target/docker
	strip -o target/docker/execbox $(EXECBOX)
	@# The warm path's jail library, loaded by templates; beside the binary, where it looks.
	strip -o target/docker/libexecbox_jail.so target/release/libexecbox_jail.so
	@# The runtime as `make runtime` made it, minus the packages' test suites (about 60 MB).
	@rm -rf target/docker/python && cp -a $(PYTHON_ENV) target/docker/python && \
	  site=$$(echo target/docker/python/lib/python3*/site-packages) && \
	  rm -rf $$site/pandas/tests $$site/numpy/tests $$site/numpy/*/tests $$site/numpy/_pyinstaller

image: image-bin
	docker/base-image.sh $(IMAGE_BASE)
	docker build -q -f docker/Dockerfile --build-arg BASE=$(IMAGE_BASE) --target light -t $(IMAGE):light -t $(IMAGE):latest .
	@docker images $(IMAGE)

image-full: image-bin
	docker/base-image.sh $(IMAGE_BASE)
	docker build -q -f docker/Dockerfile --build-arg BASE=$(IMAGE_BASE) --build-arg LANG_PKGS="$(LANG_PKGS)" \
	  --target full -t $(IMAGE):full .
	@docker images $(IMAGE)

## The light image under `docker run` with the documented privileges: docker stop, the HTTP
## basics and the refusal without them (crates/execbox-cli/tests/docker.rs), then the HTTP and
## auth suites with every server they start being that image (EXECBOX_TEST_CONTAINER_IMAGE:
## tests/support/server.rs; the tests that inspect host processes report SKIPPED).
docker-test: image
	EXECBOX_DOCKER_TEST=1 EXECBOX_DOCKER_IMAGE=$(IMAGE):light $(CARGO) test -p execbox-cli --test docker -- --nocapture
	EXECBOX_TEST_CONTAINER_IMAGE=$(IMAGE):light $(CARGO) test -p execbox-cli --test http --test auth

## The full image: every language of runtimes/ offered, C and JavaScript run through it.
docker-test-full: image-full
	EXECBOX_DOCKER_TEST=1 EXECBOX_DOCKER_FULL_IMAGE=$(IMAGE):full $(CARGO) test -p execbox-cli --test docker full_image -- --nocapture

## The multi-replica stack (deploy/compose): three replicas of the light image sharing Redis,
## behind nginx terminating TLS. The load balancer's and Redis's images are built from
## Debian's packages on the same base (no registry); Compose v2 is found or installed by
## deploy/compose/compose.sh. The test brings the stack up under a project of its own, checks
## failover, cancels across replicas, Redis outages, shared quotas, HTTP/2 and the WebSocket
## through the load balancer, and takes it down (crates/execbox-cli/tests/stack.rs).
stack-images: image
	docker build -q -f deploy/compose/lb/Dockerfile --build-arg BASE=$(IMAGE_BASE) -t $(IMAGE)-lb:latest .
	docker build -q -f deploy/compose/redis/Dockerfile --build-arg BASE=$(IMAGE_BASE) -t $(IMAGE)-redis:latest .
	@deploy/compose/compose.sh version

stack-test: stack-images
	EXECBOX_STACK_TEST=1 EXECBOX_IMAGE=$(IMAGE):light EXECBOX_LB_IMAGE=$(IMAGE)-lb:latest \
	  EXECBOX_REDIS_IMAGE=$(IMAGE)-redis:latest $(CARGO) test -p execbox-cli --test stack -- --nocapture

## Everything CI runs. Privileged tests run for real as root; with CI=true a missing
## capability fails instead of skipping.
test: runtime runtimes examples-env lint unit openapi-check k8s-check
	@# The warm path's jail library (a cdylib beside target/debug/execbox): `cargo test` builds
	@# only the rlib of a dependency, and the servers the suites start load this file.
	$(CARGO) build -p execbox-jail
	$(CARGO) test --workspace
	$(MAKE) vm-test
	$(MAKE) docker-test
	$(MAKE) k8s-docker-test
	$(MAKE) docker-test-full
	$(MAKE) stack-test

check: build
	$(EXECBOX) check

bench: runtime
	bench/cli_bench.sh

## HTTP load: execbox serve vs the reference peer (Flask + nsjail), wrk at 1, 4, 16.
load-bench: runtime
	bench/load_bench.sh

clean:
	$(CARGO) clean
