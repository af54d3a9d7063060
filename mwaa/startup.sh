#!/usr/bin/env bash
# MWAA startup script (the environment's "startup script file"): MWAA sources it on every component (scheduler,
# dag-processor, workers, triggerer, API server) before requirements.txt is installed and Airflow starts, and keeps
# the variables it exports (bin/airflow-user/execute-user-startup-script in aws/amazon-mwaa-docker-images; 5 minutes
# at most). Why: MWAA has no other place for arbitrary environment variables, and these are the sagemaker backend's
# settings (tasks/common/settings.py). Edit the values for your account before uploading.
set -euo pipefail
export PIPELINE_BACKEND=sagemaker
export PIPELINE_STORAGE_URI="s3://my-bucket/llava-pipeline"
export PIPELINE_REGION="${AWS_DEFAULT_REGION:-eu-west-1}"
export PIPELINE_SAGEMAKER_ROLE_ARN="arn:aws:iam::123456789012:role/llava-sagemaker-execution"
export PIPELINE_TAXONOMY=hotel
# export PIPELINE_ALERT_SNS_TOPIC_ARN="arn:aws:sns:eu-west-1:123456789012:llava-pipeline-alerts"
# export PIPELINE_KMS_KEY_ARNS="arn:aws:kms:eu-west-1:123456789012:key/..."
# Nothing downloads weights or data at run time.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
case "$PIPELINE_STORAGE_URI $PIPELINE_SAGEMAKER_ROLE_ARN" in
  *my-bucket*|*123456789012*) echo "startup.sh: WARNING: PIPELINE_* still hold the example values; edit startup.sh" ;;
esac
