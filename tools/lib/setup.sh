# Shared by tools/test and tools/demo: make .venv and install the package into it, on a fresh machine too.
# Sourced, not run. Usage: setup_venv [EXTRA]; install_debian_packages PACKAGE...

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

_python_for_venv() {
    # Python 3.11 is our floor (Raspberry Pi OS Bookworm); prefer it so we test what the Pi runs.
    for candidate in python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python 3.11 or newer is needed (apt-get install python3)" >&2
    return 1
}

setup_venv() {
    local extra=${1:-}
    local python
    if [[ ! -x "$repo_root/.venv/bin/python" ]]; then
        python=$(_python_for_venv) || return 1
        echo "--- creating .venv with $python"
        "$python" -m venv "$repo_root/.venv" || return 1
        "$repo_root/.venv/bin/pip" install --quiet --upgrade pip || return 1
    fi
    # Reinstall only when the dependency list changed: a fresh clone always installs.
    local stamp="$repo_root/.venv/.recyclex-installed-${extra:-runtime}"
    local wanted
    wanted="$(sha256sum "$repo_root/pyproject.toml" | cut -d' ' -f1)"
    if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "$wanted" ]]; then
        echo "--- installing recyclex-edge${extra:+[$extra]} into .venv"
        local target="$repo_root"
        [[ -n "$extra" ]] && target="$repo_root[$extra]"
        # pip's and setuptools' chatter goes to a log that is shown only when something failed.
        local log="$repo_root/.venv/pip-install.log"
        if ! "$repo_root/.venv/bin/pip" install --quiet -e "$target" >"$log" 2>&1; then
            cat "$log" >&2
            return 1
        fi
        echo "$wanted" >"$stamp"
    fi
}

install_debian_packages() {
    # Installs only what is missing, so a developer's machine is left alone.
    local missing=()
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    echo "--- installing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq || return 1
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" || return 1
    # The tests start their own brokers on free ports; the distribution's service is not wanted.
    if [[ " ${missing[*]} " == *" mosquitto "* ]]; then
        "${sudo[@]}" systemctl disable --now mosquitto >/dev/null 2>&1 || true
    fi
    # Only its promtool is wanted; the Prometheus server it brings would scrape and store for nothing.
    if [[ " ${missing[*]} " == *" prometheus "* ]]; then
        "${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
}
