"""Training engine: recipes, train, self-supervised pretraining, ensembles, kNN memories, runs, checkpoints, LR finder, distributed."""

from dataloupe.train._checkpoint import atomic_save, load_checkpoint
from dataloupe.train._distributed import DistContext, init_distributed, shutdown_distributed
from dataloupe.train._dynamics import aum, forgetting_events
from dataloupe.train._engine import train, train_samples
from dataloupe.train._ensemble import ensemble_runs
from dataloupe.train._inputs import TrainData, load_train_data
from dataloupe.train._memory import memory_run
from dataloupe.train._pretrain import pretrain
from dataloupe.train._pretrain_config import PretrainConfig, load_pretrain_config
from dataloupe.train._recipe import Recipe, build_recipe, list_recipes, load_recipe, parse_overrides, valid_keys
from dataloupe.runs import list_runs, read_run, run_dir, show_run

__all__ = [
    "DistContext",
    "PretrainConfig",
    "Recipe",
    "TrainData",
    "atomic_save",
    "aum",
    "build_recipe",
    "ensemble_runs",
    "forgetting_events",
    "init_distributed",
    "list_recipes",
    "list_runs",
    "load_checkpoint",
    "load_pretrain_config",
    "load_recipe",
    "load_train_data",
    "memory_run",
    "parse_overrides",
    "pretrain",
    "read_run",
    "run_dir",
    "show_run",
    "shutdown_distributed",
    "train",
    "train_samples",
    "valid_keys",
]
