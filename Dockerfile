# The images docker-compose.yaml runs: the official Airflow image plus this project's Python dependencies, in two
# targets. Code (dags/, plugins/, include/, tasks/, config/) is mounted by docker-compose.yaml, not baked in.
#
#   production  the Airflow environment of the sagemaker backend: requirements.txt, orchestration only (no torch,
#               transformers, TRL, accelerate or DeepSpeed; training and serving run in their SageMaker containers)
#   local       production + the local backend's runtimes, as `make` builds .venvs/ on a workstation: training from
#               include/training/requirements.txt, the local endpoint from include/serving/local-requirements.txt
FROM apache/airflow:3.3.2-python3.11 AS production
COPY constraints.txt requirements.txt /tmp/pip/
RUN pip install --no-cache-dir -c /tmp/pip/constraints.txt -r /tmp/pip/requirements.txt

FROM production AS local
COPY include/training/requirements.txt /tmp/pip/training.txt
COPY include/serving/local-requirements.txt /tmp/pip/serving.txt
# tasks/common/runtimes.py looks here; torch is PyTorch's CPU build (the default wheel pulls GBs of CUDA libraries).
ENV PIPELINE_RUNTIMES_DIR=/opt/airflow/runtimes
RUN pip install --no-cache-dir uv==0.13.9 \
 && for runtime in training serving; do \
      uv venv -q "$PIPELINE_RUNTIMES_DIR/$runtime" \
      && uv pip install -q --no-cache --python "$PIPELINE_RUNTIMES_DIR/$runtime/bin/python" \
           --extra-index-url https://download.pytorch.org/whl/cpu -c /tmp/pip/constraints.txt \
           torch==2.13.0+cpu pillow -r "/tmp/pip/$runtime.txt" || exit 1; \
    done
