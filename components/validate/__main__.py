from components.stage_runner import stage_main
from components.validate import STAGE

raise SystemExit(stage_main(STAGE))
