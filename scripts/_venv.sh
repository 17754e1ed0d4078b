# shellcheck shell=bash
# Shared setup for scripts/test and scripts/serve; source it, don't run it.
# Keeps .venv in step with the requirements files without reinstalling on every run.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"

_apt_updated=""

# apt-get install, refreshing the package lists at most once per run.
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: need root to install: $*" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z $_apt_updated ]]; then
        apt-get update -qq
        _apt_updated=1
    fi
    apt-get install -y -qq "$@" >/dev/null
}

# A venv copied from another machine may point at a Python that is not here.
_venv_works() {
    [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import sys' 2>/dev/null
}

_create_venv() {
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 needs python3-venv for ensurepip.
        apt_install python3-venv
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
}

# The stamp records what the installed set was built from: this requirements
# file, every requirements*.txt it may include, and the interpreter version.
_requirements_hash() {
    local requirements="$1"
    {
        "$VENV/bin/python" --version
        cat "$REPO_ROOT/$requirements"
        cat "$REPO_ROOT"/requirements*.txt
    } 2>&1 | sha256sum | cut -d' ' -f1
}

# ensure_venv REQUIREMENTS_FILE: create .venv if needed and install the file's
# packages unless the stamp says they already are.
ensure_venv() {
    local requirements="$1"
    local stamp="$VENV/.installed-${requirements//\//_}.sha256"
    if ! _venv_works; then
        echo "creating $VENV" >&2
        _create_venv
    fi
    local wanted
    wanted="$(_requirements_hash "$requirements")"
    if [[ -f $stamp && $(cat "$stamp") == "$wanted" ]]; then
        return 0
    fi
    echo "installing $requirements into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REPO_ROOT/$requirements"
    echo "$wanted" >"$stamp"
}
