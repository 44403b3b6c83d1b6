from components.stage import stage_main
from components.validate import run

raise SystemExit(stage_main("validate", run))
