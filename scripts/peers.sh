#!/usr/bin/env bash
# A side environment for cross-checks against peer libraries whose pins conflict with
# steerlab's (SAELens 6 pins transformer-lens<4): it sees everything in .venv through a .pth
# file and adds the peers with --no-deps, so torch and the rest are shared, never replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${STEERLAB_PEERS_VENV:-.venv-peers}
MAIN_SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
STAMP="$PEERS/.steerlab-peers"
want="$(sha256sum scripts/peers.sh | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  rm -rf "$PEERS"
  python3 -m venv "$PEERS"
  PEER_SITE=$("$PEERS/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  "$PEERS/bin/python" -m pip install --quiet --no-deps \
    sae-lens==6.54.12 transformer-lens==3.9.0 babe==0.0.7 better-abc==0.0.3 config2py==0.1.76 \
    defusedxml==0.7.1 docstring_parser==0.18.0 dol==0.3.100 formulaic==1.2.2 graze==0.1.46 \
    i2==0.1.91 importlib_resources==7.1.0 interface_meta==2.0.1 nltk==3.10.4 patsy==1.0.3 \
    plotly-express==0.4.1 py2store==0.1.24 python-dotenv==1.2.4 simple-parsing==0.1.9 \
    statsmodels==0.15.0 tenacity==9.2.1 wrapt==2.5.2 2>&1 | grep -v "is ignored" || true
  # after the peers' own site-packages, so their transformer-lens 3.9 wins inside this env only
  echo "$MAIN_SITE" > "$PEER_SITE/zz_main.pth"
  "$PEERS/bin/python" -c "import sae_lens, steerlab" || { echo "peer env check failed" >&2; exit 1; }
  echo "$want" > "$STAMP"
fi
