"""SageMaker entry point: several GPUs go through accelerate + DeepSpeed ZeRO-3, one GPU (or CPU) runs train.py as is.

SageMaker runs `python launch.py --key value ...`; the arguments pass to train.py unchanged. The GPU count comes
from SM_NUM_GPUS (set by the SageMaker container; setting it locally with DS_ACCELERATOR=cpu exercises the
multi-process path on CPU), else from torch. A job with several instances runs one accelerate launcher per host
(SM_HOSTS, SM_CURRENT_HOST), the first host coordinating.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAIN_PROCESS_PORT = "29500"  # torch.distributed rendezvous on the first host


def process_count() -> int:
    if "SM_NUM_GPUS" in os.environ:
        return int(os.environ["SM_NUM_GPUS"])
    import torch

    return torch.cuda.device_count()


def cluster() -> tuple[list[str], str]:
    """The job's hosts and this one; a single host outside SageMaker."""
    hosts = json.loads(os.environ.get("SM_HOSTS", "[]")) or ["localhost"]
    return hosts, os.environ.get("SM_CURRENT_HOST", hosts[0])


def command(train_args: list[str], processes: int, hosts: list[str] | None = None, host: str = "") -> list[str]:
    """The command that trains: absolute config paths, since the job's working directory is not ours to assume.

    `processes` is per host; accelerate wants the total across hosts.
    """
    hosts = hosts or ["localhost"]
    train = str(HERE / "train.py")
    if processes <= 1 and len(hosts) == 1:
        return [sys.executable, train, *train_args]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    configs = ["--config_file", str(HERE / "accelerate_zero3.yaml")]
    configs += ["--deepspeed_config_file", str(HERE / "ds_zero3.json")]
    total = ["--num_processes", str(max(processes, 1) * len(hosts))]
    if len(hosts) > 1:
        total += ["--num_machines", str(len(hosts)), "--machine_rank", str(hosts.index(host or hosts[0]))]
        total += ["--main_process_ip", hosts[0], "--main_process_port", MAIN_PROCESS_PORT]
    return [*accelerate, *configs, *total, train, *train_args]


def main() -> None:
    argv = command(sys.argv[1:], process_count(), *cluster())
    print("launch:", " ".join(argv), flush=True)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
