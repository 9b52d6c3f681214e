"""Fine-tuning with simulated prompts: `FinetuneConfig` and `finetune(cfg)` (decoder, adapters, LoRA, class head).

Modules: config (settings, schedule, resume rule), data (cases, splits, tiles, batches), objective (the
step's loss and its simulated clicks), checkpoints (run folder, logs, last.pt/best.pt), distributed
(torchrun), validate, curves, loop (the engine).
"""

from medsamkit.training.config import FinetuneConfig
from medsamkit.training.loop import finetune

__all__ = ["FinetuneConfig", "finetune"]
