from components.evaluate import run
from components.stage import stage_main

raise SystemExit(stage_main("evaluate", run))
