#!/usr/bin/env bash
# Installs and starts what the ingester's build, tests and demo need on a
# fresh Debian machine: protoc (for prost-build), promtool (alert rule
# tests), kubernetes-validate (manifest schemas), a running PostgreSQL on
# 127.0.0.1:5432 with trust auth, and pulsar-lite (a single-binary Pulsar
# broker for local runs and broker tests). Safe to run again.
set -euo pipefail

log() { echo "setup: $*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v protoc >/dev/null 2>&1; then
  log "installing protobuf-compiler"
  apt_install protobuf-compiler
fi

# The pulsar crate links OpenSSL through native-tls.
if ! dpkg -s libssl-dev >/dev/null 2>&1 || ! command -v pkg-config >/dev/null 2>&1; then
  log "installing libssl-dev and pkg-config"
  apt_install libssl-dev pkg-config
fi

# tests/tls.rs makes its CA, server and client certificates with the CLI.
if ! command -v openssl >/dev/null 2>&1; then
  log "installing openssl"
  apt_install openssl
fi

# tests/deploy.rs checks and unit-tests the alert rules with promtool, which
# ships in Debian's prometheus package. Only the tool is wanted: no
# recommended exporters (and policy-rc.d keeps the daemon from starting in
# containers).
if ! command -v promtool >/dev/null 2>&1; then
  log "installing prometheus (for promtool)"
  apt_install --no-install-recommends prometheus
fi

# tests/deploy.rs validates the Kubernetes manifests against the API's
# schemas (strictly: a misspelt field fails) with kubernetes-validate, which
# ships them.
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  log "installing kubernetes-validate"
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate==1.37.0 >/dev/null 2>&1 \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages kubernetes-validate==1.37.0 >/dev/null
fi

# tests/ops.rs measures a child's peak RSS with it.
if ! [ -x /usr/bin/time ]; then
  log "installing time"
  apt_install time
fi

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  log "installing postgresql"
  apt_install postgresql
fi

pg_ready() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
if ! pg_ready; then
  version=$(ls /etc/postgresql | sort -V | tail -1)
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
fi
if ! pg_ready; then
  log "PostgreSQL is not accepting connections on 127.0.0.1:5432"
  exit 1
fi
# The tests and demo connect as postgres over TCP without a password.
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
  log "PostgreSQL does not let 'postgres' in over 127.0.0.1 without a password; enable trust auth for local tests"
  exit 1
fi

# pulsar-lite ships its broker binary inside the Python package, without a
# console script; link it onto PATH.
pulsar_lite_bin() {
  python3 -c 'import os, pulsar_lite; print(os.path.join(os.path.dirname(pulsar_lite.__file__), "bin", "pulsar-lite"))' 2>/dev/null
}
if ! command -v pulsar-lite >/dev/null 2>&1; then
  if [ -z "$(pulsar_lite_bin)" ] || [ ! -x "$(pulsar_lite_bin)" ]; then
    log "installing pulsar-lite"
    python3 -m pip install -q --disable-pip-version-check pulsar-lite==0.2.0 >/dev/null 2>&1 \
      || python3 -m pip install -q --disable-pip-version-check --break-system-packages pulsar-lite==0.2.0 >/dev/null
  fi
  bin=$(pulsar_lite_bin)
  if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    log "pulsar-lite installed but its broker binary was not found"
    exit 1
  fi
  ln -sf "$bin" /usr/local/bin/pulsar-lite
fi
log "ready: protoc $(protoc --version | cut -d' ' -f2), postgres on 127.0.0.1:5432, pulsar-lite at $(command -v pulsar-lite)"
