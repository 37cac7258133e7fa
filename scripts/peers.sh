#!/usr/bin/env bash
# A side environment for cross-checks against peer libraries whose pins conflict with
# steerlab's (SAELens 6 pins transformer-lens<4, pyreft pins transformers==4.45.1,
# steering-vectors transformers<5, repeng numpy<2): it sees everything in .venv through a .pth
# file and adds the peers with --no-deps, so torch and the rest are shared, never replaced.
# Each peer gets only the extra modules its import needs (listed beside it), and the script
# checks that every one imports offline before stamping the environment as built.
# STEERLAB_VENV names the main environment (default .venv), STEERLAB_PEERS_VENV this one.
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN=${STEERLAB_VENV:-.venv}
PEERS=${STEERLAB_PEERS_VENV:-.venv-peers}
MAIN_SITE=$("$MAIN/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
STAMP="$PEERS/.steerlab-peers"
want="$(sha256sum scripts/peers.sh | cut -c1-16) $MAIN_SITE"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  rm -rf "$PEERS"
  python3 -m venv "$PEERS"
  PEER_SITE=$("$PEERS/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # sae-lens and what its import needs beyond .venv
  # eai-sparsify: natsort, schedulefree (imported by its trainer at package import)
  # dictionary-learning, steering-vectors, repeng: nothing beyond .venv
  # pyreft: pyvene, whose package import loads matplotlib and seaborn (and their deps)
  "$PEERS/bin/python" -m pip install --quiet --no-deps \
    sae-lens==6.54.12 transformer-lens==3.9.0 babe==0.0.7 better-abc==0.0.3 config2py==0.1.76 \
    defusedxml==0.7.1 docstring_parser==0.18.0 dol==0.3.100 formulaic==1.2.2 graze==0.1.46 \
    i2==0.1.91 importlib_resources==7.1.0 interface_meta==2.0.1 nltk==3.10.4 patsy==1.0.3 \
    plotly-express==0.4.1 py2store==0.1.24 python-dotenv==1.2.4 simple-parsing==0.1.9 \
    statsmodels==0.15.0 tenacity==9.2.1 wrapt==2.5.2 \
    eai-sparsify==1.3.3 natsort==8.4.0 schedulefree==1.4.1 \
    dictionary-learning==0.1.0 \
    steering-vectors==0.12.2 \
    repeng==0.4.0 \
    pyreft==0.1.0 pyvene==0.1.8 matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 \
    fonttools==4.69.1 kiwisolver==1.5.1 pillow==13.0.0 pyparsing==3.3.3 seaborn==0.13.2 \
    2>&1 | grep -v "is ignored" || true
  # after the peers' own site-packages, so their transformer-lens 3.9 wins inside this env only
  echo "$MAIN_SITE" > "$PEER_SITE/zz_main.pth"
  # repeng 0.4.0 (the newest) annotates with np.float_, which NumPy 2 removed: the peer tests
  # restore that alias before importing it (tests/peers/conftest.py), and so does this check
  for mod in sae_lens sparsify dictionary_learning.dictionary steering_vectors repeng pyreft; do
    HF_HUB_OFFLINE=1 "$PEERS/bin/python" -c "import numpy; numpy.float_ = numpy.float64; import $mod" \
      || { echo "peer env check failed: import $mod" >&2; exit 1; }
  done
  "$PEERS/bin/python" -c "import steerlab" || { echo "peer env check failed" >&2; exit 1; }
  echo "$want" > "$STAMP"
fi
