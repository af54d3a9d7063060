"""SageMaker entry point: several GPUs go through accelerate + DeepSpeed ZeRO-3, one GPU (or CPU) runs train.py as is.

SageMaker runs `python launch.py --key value ...`; the arguments pass to train.py unchanged. The GPU count comes
from SM_NUM_GPUS (set by the SageMaker container; setting it locally with DS_ACCELERATOR=cpu exercises the
multi-process path on CPU), else from torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def process_count() -> int:
    if "SM_NUM_GPUS" in os.environ:
        return int(os.environ["SM_NUM_GPUS"])
    import torch

    return torch.cuda.device_count()


def command(train_args: list[str], processes: int) -> list[str]:
    """The command that trains: absolute config paths, since the job's working directory is not ours to assume."""
    train = str(HERE / "train.py")
    if processes <= 1:
        return [sys.executable, train, *train_args]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    configs = ["--config_file", str(HERE / "accelerate_zero3.yaml")]
    configs += ["--deepspeed_config_file", str(HERE / "ds_zero3.json")]
    return [*accelerate, *configs, "--num_processes", str(processes), train, *train_args]


def main() -> None:
    argv = command(sys.argv[1:], process_count())
    print("launch:", " ".join(argv), flush=True)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
