#!/usr/bin/env bash
# MWAA startup script (the environment's "startup script file"): MWAA sources it on every component before Airflow
# starts (bin/airflow-user/execute-user-startup-script in aws/amazon-mwaa-docker-images) and keeps the variables it
# exports. The sagemaker backend's settings (tasks/common/settings.py); edit the values for your account.
export PIPELINE_BACKEND=sagemaker
export PIPELINE_STORAGE_URI="s3://my-bucket/llava-pipeline"
export PIPELINE_REGION="${AWS_DEFAULT_REGION:-eu-west-1}"
export PIPELINE_SAGEMAKER_ROLE_ARN="arn:aws:iam::123456789012:role/llava-sagemaker-execution"
export PIPELINE_TAXONOMY=hotel
# export PIPELINE_ALERT_SNS_TOPIC_ARN="arn:aws:sns:eu-west-1:123456789012:llava-pipeline-alerts"
# Nothing downloads weights or data at run time.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
