"""Optional failure notification: an SNS topic or a webhook (for example a Slack incoming webhook)."""

from __future__ import annotations

import json
import logging
import urllib.request

from . import logs
from .settings import RunnerSettings


def failure(settings: RunnerSettings, pipeline: str, message: str, exit_code: int) -> None:
    payload = {"pipeline": pipeline, "run_id": logs.RUN_ID, "exit_code": exit_code, "error": message}
    try:
        if settings.notify_sns_topic_arn:
            import boto3

            boto3.client("sns").publish(TopicArn=settings.notify_sns_topic_arn,
                                        Subject=f"aurora-sync {pipeline} failed", Message=json.dumps(payload))
        if settings.notify_webhook_url:
            request = urllib.request.Request(settings.notify_webhook_url, data=json.dumps(
                {"text": f"aurora-sync {pipeline} failed (exit {exit_code}): {message}", **payload}).encode(),
                headers={"Content-Type": "application/json"}, method="POST")
            urllib.request.urlopen(request, timeout=10).close()
    except Exception as exc:  # a broken notifier must not hide the real failure
        logs.event(f"failure notification could not be sent: {type(exc).__name__}", logging.WARNING)
