"""The production notifier against SNS (moto_server): what a subscriber receives for a task failure (sync, from the
task's process) and for a missed deadline (async, from the triggerer)."""

from __future__ import annotations

import json

from tasks.common.notifications import SnsAlertNotifier
from tests.integration.conftest import Moto
from tests.unit.common.test_notifications import LOG_URL, fire_deadline, task_failure_context


def subscribed_queue(moto: Moto) -> tuple[str, str]:
    """An SNS topic with an SQS queue subscribed to it: (topic ARN, queue URL)."""
    sns, sqs = moto.boto3_client("sns"), moto.boto3_client("sqs")
    topic = sns.create_topic(Name="ml-oncall")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="pager")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    return topic, queue_url


def received(moto: Moto, queue_url: str) -> list[dict]:
    messages = moto.boto3_client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    return [json.loads(m["Body"]) for m in messages]


def test_failures_and_missed_deadlines_are_published_to_the_topic(moto: Moto) -> None:
    topic, queue_url = subscribed_queue(moto)
    notifier = SnsAlertNotifier(target_arn=topic, region_name="us-east-1")

    notifier(task_failure_context())  # synchronously, as the task runner calls it
    assert fire_deadline(notifier) == ["running", "success"]  # asynchronously, as the triggerer runs it

    failure, deadline = received(moto, queue_url)
    assert failure["Subject"] == "[airflow] classify_images.classify failed"
    assert "endpoint returned {{ 500 }}" in failure["Message"] and LOG_URL in failure["Message"]
    assert failure["MessageAttributes"]["kind"]["Value"] == "task_failed"
    assert deadline["Subject"] == "[airflow] classify_images run not finished by its deadline"
    assert "2026-11-01T04:00:00+00:00" in deadline["Message"]
    assert deadline["MessageAttributes"]["dag_id"]["Value"] == "classify_images"
