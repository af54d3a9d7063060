# The image docker-compose.yaml runs: the official Airflow image plus this project's Python dependencies.
# Code (dags/, plugins/, include/, tasks/, config/) is mounted by docker-compose.yaml, not baked in.
FROM apache/airflow:3.3.2-python3.11

COPY constraints.txt requirements.txt /tmp/pip/
# torch first, from PyTorch's CPU index: the default torch wheel pulls several GB of CUDA libraries.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir -c /tmp/pip/constraints.txt -r /tmp/pip/requirements.txt
