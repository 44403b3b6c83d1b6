from components.register import run
from components.stage import stage_main

raise SystemExit(stage_main("register", run))
