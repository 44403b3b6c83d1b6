from components.stage_runner import stage_main
from components.tokenize import STAGE

raise SystemExit(stage_main(STAGE))
