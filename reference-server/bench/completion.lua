-- wrk script: POST a one-token completion (see docs/OPERATIONS.md "Load test").
wrk.method = "POST"
wrk.body = '{"prompt": "0", "max_tokens": 1, "temperature": 0}'
wrk.headers["Content-Type"] = "application/json"
