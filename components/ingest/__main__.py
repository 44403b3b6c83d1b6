from components.ingest import run
from components.stage import stage_main

raise SystemExit(stage_main("ingest", run))
