"""What both toys' recipes share: training an LLLite on a toy's shapes in about 5 minutes on a CPU.

Each toy's own recipe (:class:`lllite.sdxl.toy.ToyRecipe`, :class:`lllite.anima.toy.ToyRecipe`) sets its
defaults and adds its family's options.
"""
from __future__ import annotations

from dataclasses import dataclass

from lllite.toy import TOY


@dataclass
class Recipe:
    """The settings every toy recipe has.

    Args:
        train_samples: shapes in the training set.
        size: image side in pixels (the toy's pretraining size).
        max_train_seconds: training time budget.
        max_train_steps: most training steps; the cosine learning rate anneals over these steps or over
            ``max_train_seconds``, whichever runs out first.
        train_batch_size, learning_rate, cond_emb_dim, network_dim, timestep_sampling: see
            :class:`lllite.train.TrainConfig`.
        compile: train the denoising model as one ``torch.compile`` graph (see :class:`lllite.train.TrainConfig`).
        seed: seeds the dataset and the training.
    """

    train_samples: int = 2000
    size: int = 128
    max_train_seconds: float = 300.0
    max_train_steps: int = 4000
    train_batch_size: int = 8
    learning_rate: float = 4e-3
    cond_emb_dim: int = 32
    network_dim: int = 64
    timestep_sampling: str = "uniform"
    compile: bool = False
    seed: int = 0

    def shared_settings(self) -> dict:
        """The :class:`lllite.train.TrainConfig` settings every toy recipe has: the toy in float32, a cosine
        learning rate after a short warmup, plain AdamW, cached latents and text, float files."""
        return dict(
            pretrained_model_name_or_path=TOY, cond_emb_dim=self.cond_emb_dim, network_dim=self.network_dim,
            learning_rate=self.learning_rate, train_batch_size=self.train_batch_size, lr_scheduler="cosine",
            lr_warmup_steps=min(50, self.max_train_steps // 10), timestep_sampling=self.timestep_sampling,
            max_train_steps=self.max_train_steps, max_train_seconds=self.max_train_seconds, mixed_precision="no",
            gradient_checkpointing=False, cache_latents=True, cache_text_encoder_outputs=True, optimizer_type="adamw",
            seed=self.seed, save_precision="float", compile=self.compile,
        )
