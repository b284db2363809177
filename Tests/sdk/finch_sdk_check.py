"""Drives the sandbox with Finch's official Python SDK in strict mode.

Usage: finch_sdk_check.py BASE_URL TOKEN OTHER_TOKEN
       finch_sdk_check.py --limits BASE_URL TOKEN
       finch_sdk_check.py --unwrap SECRET BODY_FILE HEADERS_FILE JOB_ID
         (a delivery the sandbox made: its raw body and its headers as a JSON object)
         (a sandbox run with --app-rate-limit 2/1m --ip-rate-limit 5/5m --retry-after-header)
Every response must parse under strict response validation (a missing required key, an
unknown enum value or an unparseable date fails). Prints "ok" and exits 0 when all pass.
"""
import sys
import time

import finch

if sys.argv[1] == "--unwrap":
    import json
    secret, body_file, headers_file, job_id = sys.argv[2:6]
    body = open(body_file, "rb").read()
    headers = json.load(open(headers_file))
    event = finch.Finch(access_token="unused", webhook_secret=secret).webhooks.unwrap(body, headers, secret=secret)
    if event.event_type not in ("job.data_sync_all.completed", "job.w4_form_employee_sync.completed"):
        print("FAILED: event_type", event.event_type)
        sys.exit(1)
    if event.data.job_id != job_id:
        print("FAILED: job_id", event.data.job_id)
        sys.exit(1)
    try:
        finch.Finch(access_token="unused").webhooks.unwrap(body + b" ", headers, secret=secret)
        print("FAILED: a changed body verified")
        sys.exit(1)
    except ValueError:
        pass
    print("ok")
    sys.exit(0)

limits_mode = sys.argv[1] == "--limits"
if limits_mode:
    base_url, token, other_token = sys.argv[2], sys.argv[3], None
else:
    base_url, token, other_token = sys.argv[1], sys.argv[2], sys.argv[3]


def client(access_token):
    return finch.Finch(access_token=access_token, base_url=base_url,
                       _strict_response_validation=True, max_retries=0)


def check(condition, what):
    if not condition:
        print("FAILED:", what)
        sys.exit(1)


def expect_rate_limit(call, finch_code, what):
    try:
        call()
        check(False, what + ": expected 429")
    except finch.RateLimitError as error:
        check(error.status_code == 429, what + ": 429 status")
        check(error.body.get("finch_code") == finch_code, what + ": finch_code " + finch_code)
        check(error.body.get("name") == "rate_limit_exceeded_error", what + ": name")
        check("retry_at" not in error.body, what + ": no retry_at, unlike the quota 429")
        check(int(error.response.headers.get("retry-after")) > 0, what + ": Retry-After")


if limits_mode:
    c = client(token)
    for n in range(2):
        check(c.jobs.automated.with_raw_response.create(
            type="w4_form_employee_sync", params={"individual_id": "i-%d" % n}).status_code == 201, "within the limits")
    # The application allows 2 a minute on this endpoint; the address 5 in 5 minutes.
    for n in range(3):
        expect_rate_limit(lambda: c.jobs.automated.create(type="w4_form_employee_sync", params={"individual_id": "x"}),
                          "finch_application_rl", "application limit")
    expect_rate_limit(lambda: c.jobs.automated.create(type="data_sync_all"), "finch_api_ip_rl", "IP limit")
    expect_rate_limit(lambda: c.jobs.automated.list(), "finch_api_ip_rl", "IP block on every route")
    print("ok")
    sys.exit(0)

c = client(token)

# 201 then 202: the same model; only the status code tells them apart.
first = c.jobs.automated.with_raw_response.create(type="data_sync_all")
created = first.parse()
check(first.status_code == 201, "first data_sync_all is 201")
check(first.headers.get("finch-request-id"), "Finch-Request-Id header")
second = c.jobs.automated.with_raw_response.create(type="data_sync_all")
check(second.status_code == 202, "second data_sync_all while running is 202")
check(second.parse().job_id == created.job_id, "202 returns the running job")
check(second.parse().remaining_refreshes == created.remaining_refreshes, "202 uses no quota")

w4 = c.jobs.automated.with_raw_response.create(type="w4_form_employee_sync", params={"individual_id": "i-9"})
check(w4.status_code == 201, "w4 job created")

job = c.jobs.automated.retrieve(created.job_id)
check(job.job_id == created.job_id and job.type == "data_sync_all", "retrieve")
check(job.status in ("pending", "in_progress"), "new job is pending or in progress")

listed = c.jobs.automated.list(limit=10, offset=0)
check([j.job_id for j in listed.data] == [w4.parse().job_id, created.job_id], "list newest first")
check(listed.meta.quotas.data_sync_all.allowed_refreshes == created.allowed_refreshes, "list quota")

# Wait (with a deadline) for the job to finish, then the quota answers 429 with retry_at.
deadline = time.monotonic() + 20
while c.jobs.automated.retrieve(created.job_id).status in ("pending", "in_progress"):
    check(time.monotonic() < deadline, "job completes within 20 s")
    time.sleep(0.05)
check(c.jobs.automated.retrieve(created.job_id).completed_at is not None, "completed_at set")
try:
    c.jobs.automated.create(type="data_sync_all")
    check(False, "quota exhausted gives 429")
except finch.RateLimitError as error:
    check(error.status_code == 429, "429 status")
    check(error.body.get("retry_at"), "429 carries retry_at")

try:
    client("not-a-token").jobs.automated.create(type="data_sync_all")
    check(False, "unknown token gives 401")
except finch.AuthenticationError as error:
    check(error.body.get("name") == "invalid_token_error", "401 name")

try:
    c.jobs.automated.retrieve("no-such-job")
    check(False, "unknown job gives 404")
except finch.NotFoundError as error:
    check(error.body.get("name") == "not_found_error", "404 name")

try:
    c.jobs.automated.create(type="w4_form_employee_sync", params={})
    check(False, "w4 without individual gives 400")
except finch.BadRequestError as error:
    check(error.body.get("name") == "bad_request", "400 name")

# Another connection's quota is independent.
check(client(other_token).jobs.automated.with_raw_response.create(type="data_sync_all").status_code == 201,
      "another connection is not limited")
print("ok")
