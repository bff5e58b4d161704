"""Start-up checks of the environment a command runs in, done before any model is loaded.

A config can be valid and still unusable here: a tracker that is not installed, fp16 on a CPU
(autocast does nothing there, so the run would be fp32 while claiming fp16), flash-attention
without CUDA, a launch under FSDP or DeepSpeed, ``--device cuda`` without a GPU. Each is refused
with one line that says what to do, instead of a warning that is easy to miss or a traceback
from deep inside a library.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import platform
from typing import Optional

import torch

from .config import MIXED_PRECISION, TrainConfig
from .env import emulated_bf16_warning, env_flag, launcher_precision
from .errors import AftError

logger = logging.getLogger(__name__)

# tracker name (accelerate's `log_with`) -> (module to import, how to install it)
TRACKER_PACKAGES = {
    "tensorboard": (("tensorboardX", "tensorboard"), "pip install tensorboard"),
    "wandb": (("wandb",), "pip install aft_hf[wandb]"),
    "mlflow": (("mlflow",), "pip install mlflow"),
    "comet_ml": (("comet_ml",), "pip install comet_ml"),
    "aim": (("aim",), "pip install aim"),
    "clearml": (("clearml",), "pip install clearml"),
    "dvclive": (("dvclive",), "pip install dvclive"),
}
SHARDING_ENV = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}
SHARDING_WHY = ("aft_hf does not support {name}: the attack runs on the unwrapped module's own parameters, "
                "which {name} shards/partitions across processes. Launch with DDP instead "
                "(e.g. configs/accelerate/multi_gpu.yaml), with perf.gradient_checkpointing for memory")


class LaunchError(AftError, RuntimeError):
    """The environment cannot run what the config asks for (missing package, device, launcher)."""


def requested_precision(cfg: TrainConfig) -> str:
    """What precision the run will ask accelerate for: the config's, else the launcher's, else `no`."""
    return cfg.optim.mixed_precision or launcher_precision()


def accelerator_precision(cfg: TrainConfig) -> Optional[str]:
    """What to hand ``Accelerator(mixed_precision=...)``: the requested precision, normalised (accelerate would
    run ``ACCELERATE_MIXED_PRECISION=BF16`` in fp32 while recording "BF16"); None when neither the config nor
    the launcher says, so accelerate's already initialised state is left as it is."""
    asked = cfg.optim.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION")
    return requested_precision(cfg) if asked else None


def check_training_environment(cfg: TrainConfig) -> None:
    """Refuse, before the Accelerator exists, every request this machine or launch cannot honour."""
    problems = []
    for var, name in SHARDING_ENV.items():
        if env_flag(var):
            problems.append(SHARDING_WHY.format(name=name) + f" ({var} is set by the launcher)")
    tracker = cfg.logging.report_to  # `all` takes whichever are installed; `none` needs nothing
    if tracker in TRACKER_PACKAGES:
        modules, install = TRACKER_PACKAGES[tracker]
        if not any(importlib.util.find_spec(m) for m in modules):
            problems.append(f"logging.report_to: tracker '{tracker}' is not installed: {install} "
                            "(or --logging.report_to none)")
    cpu = cfg.cpu if cfg.cpu is not None else not torch.cuda.is_available()
    if requested_precision(cfg) not in MIXED_PRECISION:  # only the launcher's can be: the config's is validated
        problems.append(f"ACCELERATE_MIXED_PRECISION={os.environ.get('ACCELERATE_MIXED_PRECISION')!r} (set by "
                        f"`accelerate launch --mixed_precision` or its config) is not one of {', '.join(MIXED_PRECISION)}")
    elif cpu and requested_precision(cfg) == "fp16":
        problems.append("optim.mixed_precision: fp16 is not supported on CPU (autocast would leave the run in "
                        "fp32): use bf16 or no")
    problems.extend(attention_problems(cfg.model.attn_implementation, cpu))
    if problems:
        raise LaunchError("; ".join(problems))


def attention_problems(impl: str, cpu: bool) -> list[str]:
    """``flash_attention_2`` needs CUDA and the flash-attn package; sdpa and eager run anywhere."""
    if impl != "flash_attention_2":
        return []
    if cpu:
        return ["model.attn_implementation: flash_attention_2 needs a CUDA GPU: use sdpa (the default) or eager"]
    if importlib.util.find_spec("flash_attn") is None:
        return ["model.attn_implementation: flash_attention_2 needs the flash-attn package "
                "(pip install flash-attn): use sdpa (the default) or eager"]
    return []


def apply_launch(cfg: TrainConfig, accelerator) -> None:
    """Check the created Accelerator and write what it decided back into ``cfg``.

    ``cfg`` then records the effective run (exported as ``aft_config.yaml`` and in the model
    card): the precision the launcher chose, and the global batch implied by
    ``optim.per_device_batch_size``.
    """
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    for sharded, name in ((DistributedType.FSDP, "FSDP"), (DistributedType.DEEPSPEED, "DeepSpeed")):
        if kind == sharded:
            raise LaunchError(SHARDING_WHY.format(name=name))
    effective = str(accelerator.mixed_precision)
    if accelerator.device.type == "cpu" and effective == "fp16":
        raise LaunchError("optim.mixed_precision: fp16 is not supported on CPU: use bf16 or no")
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if cfg.optim.mixed_precision and launcher and launcher.lower() != cfg.optim.mixed_precision:
        logger.warning("optim.mixed_precision=%s overrides the launcher's %s", cfg.optim.mixed_precision, launcher)
    if accelerator.is_main_process and (warning := emulated_bf16_warning(accelerator.device.type, effective)):
        logger.warning("optim.mixed_precision bf16: %s", warning)
    cfg.optim.mixed_precision = effective
    resolve_global_batch(cfg, accelerator.num_processes)


def resolve_global_batch(cfg: TrainConfig, num_processes: int) -> None:
    """``optim.batch_size`` from ``optim.per_device_batch_size`` when that is given: per device x processes x
    accumulation steps (the global batch the run trains with and records); left alone otherwise."""
    if cfg.optim.per_device_batch_size is not None:
        cfg.optim.batch_size = cfg.optim.per_device_batch_size * num_processes * cfg.optim.gradient_accumulation_steps


WORLD_SIZE_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
"""Where a launcher (``accelerate launch``, torchrun, MPI) puts the number of processes, as accelerate reads it."""


def resolved_for_print(cfg: TrainConfig) -> str:
    """``--print-config``: the config as this launch would run and save it (``aft_config.yaml``), as YAML.

    What :func:`apply_launch` decides once the Accelerator exists is resolved here from the launcher's
    environment without creating one: the precision (the config's, else the launcher's, else ``no``) and,
    with ``optim.per_device_batch_size``, the global batch for this launch's process count (a comment line
    says so: under another launch the same config trains with another global batch).
    """
    from accelerate.utils.environment import get_int_from_env

    resolved, comments = copy.deepcopy(cfg), []
    precision = requested_precision(cfg)
    if cfg.optim.mixed_precision is None and precision in MIXED_PRECISION:  # an unknown one is refused at start
        resolved.optim.mixed_precision = precision
        comments.append(f"optim.mixed_precision resolved for this launch: {precision} (the launcher's "
                        "ACCELERATE_MIXED_PRECISION, else no)")
    if cfg.optim.per_device_batch_size is not None:
        processes = get_int_from_env(list(WORLD_SIZE_ENV), 1)
        resolve_global_batch(resolved, processes)
        comments.append(f"optim.batch_size resolved for this launch: per_device_batch_size "
                        f"{cfg.optim.per_device_batch_size} x {processes} process(es) x gradient_accumulation_steps "
                        f"{cfg.optim.gradient_accumulation_steps}")
    return "".join(f"# {line}\n" for line in comments) + resolved.to_yaml()


def run_info(cfg: TrainConfig, accelerator) -> dict:
    """How the run was launched, for ``train_summary.json``: precision, layout, library versions."""
    import accelerate
    import datasets
    import transformers

    from . import __version__

    return {
        "mixed_precision": str(accelerator.mixed_precision),
        "num_processes": accelerator.num_processes,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "global_batch_size": cfg.optim.batch_size,
        "per_device_batch_size": cfg.optim.batch_size // (accelerator.num_processes
                                                          * accelerator.gradient_accumulation_steps),
        "device": str(accelerator.device),
        "versions": {"aft_hf": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                     "datasets": datasets.__version__},
    }


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` -> a usable device, or a one-line error."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    usage = "use --device auto, cpu, cuda or cuda:N"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise LaunchError(f"unknown device '{spec}': {usage}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LaunchError(f"--device {spec}: no CUDA device is available here (torch {torch.__version__}): "
                              "use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LaunchError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here: {usage}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise LaunchError(f"--device {spec}: MPS is not available here: use --device cpu (or auto)")
    elif device.type != "cpu":
        raise LaunchError(f"unsupported device '{spec}': {usage}")
    return device
