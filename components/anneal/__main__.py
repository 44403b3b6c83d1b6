from components.anneal import run
from components.stage import stage_main

raise SystemExit(stage_main("anneal", run))
