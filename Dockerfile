# The images docker-compose.yaml runs: the official Airflow image plus this project's Python dependencies, in two
# targets. Code (dags/, plugins/, include/, tasks/, config/) is mounted by docker-compose.yaml, not baked in.
#
#   production  the Airflow environment of the sagemaker backend: requirements.txt, orchestration only (no torch,
#               transformers, TRL, accelerate or DeepSpeed; training and serving run in their SageMaker containers)
#   local       production + the local backend's runtimes, as `make` builds .venvs/ on a workstation: training from
#               include/training/requirements.txt, the local endpoint (vLLM's CPU build) from include/serving/
FROM apache/airflow:3.3.2-python3.11 AS production
COPY constraints.txt requirements.txt /tmp/pip/
RUN pip install --no-cache-dir -c /tmp/pip/constraints.txt -r /tmp/pip/requirements.txt

FROM production AS local
COPY include/training/requirements.txt /tmp/pip/training.txt
COPY include/serving/local-requirements.txt /tmp/pip/serving.txt
COPY include/serving/local-constraints.txt include/serving/local-excludes.txt include/serving/torchvision_cpu_ops.py \
     include/serving/torchvision_cpu_ops.pth /tmp/pip/serving/
# tasks/common/runtimes.py looks here; torch is PyTorch's CPU build (the default wheel pulls GBs of CUDA libraries).
# As the Makefile: the serving runtime (vLLM's CPU build) has its own constraints and excludes, and the torchvision
# import hook in its site-packages (a no-op with the CPU index's torchvision).
ENV PIPELINE_RUNTIMES_DIR=/opt/airflow/runtimes
RUN pip install --no-cache-dir uv==0.13.9 \
 && install_runtime() { \
      venv="$PIPELINE_RUNTIMES_DIR/$1" && shift && uv venv -q "$venv" \
      && uv pip install -q --no-cache --python "$venv/bin/python" \
           --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu pillow "$@"; \
    } \
 && install_runtime training -c /tmp/pip/constraints.txt -r /tmp/pip/training.txt \
 && install_runtime serving -c /tmp/pip/serving/local-constraints.txt --excludes /tmp/pip/serving/local-excludes.txt \
      -r /tmp/pip/serving.txt \
 && cp /tmp/pip/serving/torchvision_cpu_ops.py /tmp/pip/serving/torchvision_cpu_ops.pth \
      "$("$PIPELINE_RUNTIMES_DIR/serving/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
