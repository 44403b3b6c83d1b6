from components.clean import run
from components.stage import stage_main

raise SystemExit(stage_main("clean", run))
