from components.evol import STAGE
from components.stage_runner import stage_main

raise SystemExit(stage_main(STAGE))
