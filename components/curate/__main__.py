from components.curate import run
from components.stage import stage_main

raise SystemExit(stage_main("curate", run))
