"""The demo pipeline's Dagster definitions (`dagster dev` loads this file; see workspace.yaml).

With FLOKAN_API_KEY and FLOKAN_BASE_URL unset, the local Flokan emulator is started for you.
"""

from flokan_dagster.demo import build_demo_definitions

defs = build_demo_definitions()
