from components.dedup import run
from components.stage import stage_main

raise SystemExit(stage_main("dedup", run))
