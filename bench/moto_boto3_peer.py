#!/usr/bin/env python3
"""boto3 (AWS's Python SDK) against the same moto server as `nimbus bench engine --moto`, on the
same number of messages: the server's own speed, for comparison. Prints one line per scenario,
`<scenario> <messages per second>`. Installs nothing: boto3 comes with moto.

Usage: moto_boto3_peer.py ENDPOINT MESSAGES
"""
import sys
import time

try:
    import boto3
except ImportError:
    print("missing: boto3: pip install 'moto[server]'")
    sys.exit(3)


def main():
    endpoint, messages = sys.argv[1], int(sys.argv[2])
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    url = sqs.create_queue(QueueName="boto3-peer-%d" % time.time_ns())["QueueUrl"]
    body = "x" * 100
    start = time.perf_counter()
    for _ in range(messages // 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(j), "MessageBody": body} for j in range(10)])
    print("send_batch_10 %.0f" % (messages / (time.perf_counter() - start)))
    start, done = time.perf_counter(), 0
    while done < messages:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            break
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
        done += len(got)
    print("receive_delete_batch_10 %.0f" % (done / (time.perf_counter() - start)))
    sqs.delete_queue(QueueUrl=url)


if __name__ == "__main__":
    main()
