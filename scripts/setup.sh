#!/usr/bin/env bash
# Install what the project needs on a Debian/Ubuntu machine: system packages (through apt when
# this user may), then the virtualenv in .venv with the Python dependencies. Safe to run again:
# it installs only what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PYTHON=${PYTHON:-python3}

# Debian package -> why the project needs it.
declare -A SYSTEM_PACKAGES=(
    [redis-server]="the default broker, and the tests' private broker"
    [rabbitmq-server]="the other broker: the tests run the broker-dependent suite on a private node"
    [libpango-1.0-0]="WeasyPrint renders the PDF reports with Pango"
    [libpangoft2-1.0-0]="WeasyPrint's font handling"
    [libharfbuzz-subset0]="WeasyPrint embeds font subsets in PDFs"
    [fonts-dejavu-core]="a font for the PDF reports on machines that have none"
    [chromium]="the browser test of Web Push (tests/e2e/), driven by Playwright: Debian's build, never one Playwright downloads"
    [prometheus]="promtool, which checks and unit-tests the alert rules (deploy/prometheus/); the server it also brings is not used"
)
# The test hosts (scripts/test-hosts.sh) need root to run at all; without it their tests skip,
# so only a user who could run them is asked for these.
if [[ $(id -u) == 0 ]] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }; then
    SYSTEM_PACKAGES[iproute2]="ip netns: the tests' and bench/hosts.py's test hosts (scripts/test-hosts.sh)"
    SYSTEM_PACKAGES[socat]="forwards the services' ports into the test hosts (tests/hosts.py)"
fi

missing=()
if command -v dpkg-query >/dev/null; then
    for package in "${!SYSTEM_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$package")
        fi
    done
    # Debian ships venv and ensurepip apart from python3 itself.
    if ! "$PYTHON" -c "import ensurepip, venv" 2>/dev/null; then
        missing+=("python3-venv")
    fi
elif ! command -v redis-server >/dev/null; then
    echo "Not a Debian/Ubuntu machine: install redis-server, rabbitmq-server, Pango, HarfBuzz, Chromium, promtool, iproute2 and socat by hand." >&2
    exit 1
fi

if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo)
    else
        echo "These system packages are missing:" >&2
        for package in "${missing[@]}"; do
            echo "  $package: ${SYSTEM_PACKAGES[$package]:-creates the virtualenv}" >&2
        done
        echo "Install them with: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "Installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version 2>&1))." >&2
    exit 1
fi

if [[ ! -x $VENV/bin/python ]]; then
    echo "Creating the virtualenv in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when the declared dependencies changed since the last install.
if [[ ! -f $VENV/.installed || pyproject.toml -nt $VENV/.installed ]]; then
    echo "Installing Python dependencies into $VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
    touch "$VENV/.installed"
fi
