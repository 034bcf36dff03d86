#!/usr/bin/env bash
# Builds this repository as a ROS 2 package with colcon, in a throwaway
# workspace, against the ROS 2 that pip installed into the venv, then checks
# the result: the generated interfaces import from the workspace install, and
# the installed executable starts, joins the graph and stops cleanly.
#
# Run by CI after `make test` (which created the venv). Usage:
#   scripts/colcon_check.sh            # uses ./.venv
#   VENV=/path/to/venv scripts/colcon_check.sh
#   KEEP_WS=1 scripts/colcon_check.sh  # keep the workspace for inspection
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
if [[ ! -x "$VENV/bin/colcon" ]]; then
  echo "colcon_check: $VENV/bin/colcon missing; run 'make venv' first" >&2
  exit 1
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

WS="$(mktemp -d "${TMPDIR:-/tmp}/groma_colcon_ws.XXXXXX")"
cleanup() { if [[ "${KEEP_WS:-0}" == 1 ]]; then echo "colcon_check: workspace kept at $WS"; else rm -rf "$WS"; fi; }
trap cleanup EXIT

# The repository is the package (package.xml at its root); colcon does not
# descend into a package, and interfaces/vision_msgs has a COLCON_IGNORE, so
# vision_msgs comes from the venv, as a system vision_msgs would in a real
# workspace.
mkdir -p "$WS/src"
ln -s "$REPO" "$WS/src/groma_ros"
cd "$WS"

# Isolation as in the tests (tests/ros_env.py): localhost discovery, a domain
# of our own, the SHM profile; never RMW_IMPLEMENTATION (only Fast DDS exists).
unset RMW_IMPLEMENTATION ROS_LOCALHOST_ONLY
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((1 + $$ % 100))}"
export FASTDDS_DEFAULT_PROFILES_FILE="$REPO/config/fastdds_large_shm.xml"

# The venv is the underlay: an ament prefix made of the ros-* wheels plus the
# vision_msgs that `pip install` generated. The compat include points CMake at
# it and fixes the wheels' baked-in /opt/python include dirs.
export AMENT_PREFIX_PATH="$VIRTUAL_ENV" CMAKE_PREFIX_PATH="$VIRTUAL_ENV"
export MAKEFLAGS="-j2"   # 2-core machines, shared with others

start=$SECONDS
colcon build \
  --event-handlers console_direct+ \
  --cmake-args \
    -DBUILD_TESTING=OFF \
    -DCMAKE_BUILD_TYPE=Release \
    "-DPython3_EXECUTABLE=$VIRTUAL_ENV/bin/python" \
    "-DCMAKE_PROJECT_INCLUDE=$REPO/cmake/ros_pip_compat.cmake"
echo "colcon_check: colcon build took $((SECONDS - start)) s"

# colcon's setup scripts read variables that may be unset.
set +u
# shellcheck disable=SC1091
. "$WS/install/setup.sh"
set -u

PKG_PREFIX="$WS/install/groma_ros"
for exe in groma_node fake_camera groma_command; do
  [[ -x "$PKG_PREFIX/lib/groma_ros/$exe" ]] || { echo "colcon_check: lib/groma_ros/$exe missing" >&2; exit 1; }
done
[[ -f "$PKG_PREFIX/share/groma_ros/package.xml" ]]
[[ -f "$PKG_PREFIX/share/ament_index/resource_index/packages/groma_ros" ]]

# The interfaces must come from the workspace, not from the venv's own
# install of this project. An editable install (make venv) puts a
# scikit-build-core import hook first on sys.meta_path that serves groma_ros
# from the source tree and the venv; drop it here so plain sys.path
# resolution, i.e. the PYTHONPATH that setup.sh set, decides.
python - "$PKG_PREFIX" <<'PY'
import sys
from pathlib import Path

prefix = Path(sys.argv[1]).resolve()
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ScikitBuildRedirectingFinder"]

from groma_ros.msg import GroundingResult  # noqa: E402
from groma_ros.srv import Ground  # noqa: E402
import groma_ros.msg  # noqa: E402
import groma_ros.node  # noqa: E402

for module in (groma_ros.msg, groma_ros.node):
    where = Path(module.__file__).resolve()
    assert prefix in where.parents, f"{module.__name__} imported from {where}, not from {prefix}"
    print(f"colcon_check: {module.__name__} <- {where}")
print("colcon_check: interfaces OK:", GroundingResult.__name__, Ground.__name__)
PY

# The executable `ros2 run groma_ros groma_node` would start. autostart:=false
# keeps it unconfigured (no model load), which is enough to show it starts.
python "$REPO/scripts/ros_smoke_run.py" --node groma_node -- \
  "$PKG_PREFIX/lib/groma_ros/groma_node" --ros-args -p autostart:=false

echo "colcon_check: OK ($((SECONDS - start)) s)"
