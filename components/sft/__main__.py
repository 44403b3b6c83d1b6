from components.sft import run
from components.stage import stage_main

raise SystemExit(stage_main("sft", run))
