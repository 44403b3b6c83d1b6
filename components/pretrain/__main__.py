from components.pretrain import run
from components.stage import stage_main

raise SystemExit(stage_main("pretrain", run))
