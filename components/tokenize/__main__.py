from components.stage import stage_main
from components.tokenize import run

raise SystemExit(stage_main("tokenize", run))
